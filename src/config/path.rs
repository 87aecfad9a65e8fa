//! Paths into the configuration tree (`routes[1].verify.hmac.header`), used
//! to name where an error is and to find its line and column.

use std::fmt;

use crate::template::PathSegment;

/// One step of a path: a map key or a list index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the root of the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Path(pub(crate) Vec<Seg>);

impl Path {
    pub(crate) fn root() -> Self {
        Path(Vec::new())
    }

    /// This path with a key appended.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Path(segs)
    }

    /// This path with an index appended.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Path(segs)
    }

    /// Whether the path's last step is the key `key`.
    pub(crate) fn ends_with_key(&self, key: &str) -> bool {
        matches!(self.0.last(), Some(Seg::Key(last)) if last == key)
    }

    /// This path followed by a path inside a value template.
    pub(crate) fn join_template(&self, at: &[PathSegment]) -> Self {
        let mut segs = self.0.clone();
        segs.extend(at.iter().map(|segment| match segment {
            PathSegment::Key(key) => Seg::Key(key.clone()),
            PathSegment::Index(index) => Seg::Index(*index),
        }));
        Path(segs)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}
