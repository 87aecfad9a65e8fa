//! Where every node of the YAML file sits. The YAML tree used for loading
//! carries no positions, so a second, event-level pass over the text records
//! the line and column of every key and value by path; an error is then
//! placed at the deepest node of its path that exists in the file.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::path::{Path, Seg};

/// A line and a column, both from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Pos {
    fn from_marker(mark: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: mark.line().max(1),
            column: mark.col() + 1,
        }
    }
}

/// Positions of the nodes of one file.
#[derive(Debug, Default)]
pub(crate) struct Locations {
    values: HashMap<Path, Pos>,
    keys: HashMap<Path, Pos>,
    /// Where each YAML document starts (its `---`, when it has one).
    documents: Vec<Pos>,
    /// Each key written a second time in its mapping, with where it was
    /// first written and where again.
    duplicates: Vec<(Path, Pos, Pos)>,
    /// Each unquoted value that YAML reads as a whole number written
    /// otherwise than in decimal (`0x10`, `+5`).
    renumbered: Vec<Path>,
}

impl Locations {
    /// Records the positions in `text`. A file the event parser cannot read
    /// yields no positions; the loader has already reported its syntax.
    pub(crate) fn of(text: &str) -> Self {
        let mut recorder = Recorder {
            locations: Locations::default(),
            stack: Vec::new(),
            documents: 0,
        };
        let mut parser = Parser::new_from_str(text);
        // Every document, so that a second one can be placed; only the
        // first one's nodes are recorded.
        if parser.load(&mut recorder, true).is_err() {
            return Locations::default();
        }
        recorder.locations
    }

    /// Where the file's document number `index` (from 0) starts.
    pub(crate) fn document(&self, index: usize) -> Pos {
        self.documents
            .get(index)
            .copied()
            .unwrap_or(Pos { line: 1, column: 1 })
    }

    /// The first key written twice in one mapping, with where it was
    /// first written and where again. The YAML library refuses such a
    /// file, but places the error at the mapping.
    pub(crate) fn first_duplicate(&self) -> Option<&(Path, Pos, Pos)> {
        self.duplicates.first()
    }

    /// Each unquoted value that YAML reads as a whole number written
    /// otherwise than in decimal, so that the text sent differs from the
    /// text written (`event_type: 0x10` is sent as `16`).
    pub(crate) fn renumbered(&self) -> &[Path] {
        &self.renumbered
    }

    /// The path of the value that starts at `pos`, when one does.
    pub(crate) fn value_at(&self, pos: Pos) -> Option<&Path> {
        self.values
            .iter()
            .find(|(_, at)| **at == pos)
            .map(|(path, _)| path)
    }

    /// The position of the deepest existing node on `path`.
    pub(crate) fn value(&self, path: &Path) -> Pos {
        self.find(path, false)
    }

    /// Like [`Locations::value`], but a path ending in an existing key gives
    /// the key's own position (for unknown keys).
    pub(crate) fn key(&self, path: &Path) -> Pos {
        self.find(path, true)
    }

    fn find(&self, path: &Path, prefer_key: bool) -> Pos {
        let mut segs = path.0.clone();
        loop {
            let here = Path(segs.clone());
            if prefer_key && let Some(pos) = self.keys.get(&here) {
                return *pos;
            }
            if let Some(pos) = self.values.get(&here) {
                return *pos;
            }
            if segs.pop().is_none() {
                return Pos { line: 1, column: 1 };
            }
        }
    }
}

/// How deep the YAML library that loads the file lets values nest: a
/// collection at a deeper level fails its reading.
const MAX_NESTING: usize = 128;

/// Where `text` first nests values deeper than the library that loads it
/// allows (see [`MAX_NESTING`]), found before that library reads it. That
/// library scans the whole file before it counts the depth, and its
/// scanning slows with the square of the depth: a file of nothing but
/// `[`s took seconds, and longer for each kilobyte, to be refused. The
/// event parser here stops at the first value too deep; its scanner reads
/// ahead to the end of a `[ ]` or `{ }`, and refuses one nested 256 deep,
/// which is then where the nesting is said to be too deep. A file it
/// cannot read otherwise is left to the loader, which reports its syntax.
pub(crate) fn nested_too_deep(text: &str) -> Option<Pos> {
    let mut parser = Parser::new_from_str(text);
    // The root collection is the first level, as it is to the loader.
    let mut depth = 0usize;
    loop {
        let event = match parser.next_token() {
            Ok(event) => event,
            Err(e) if e.info() == "recursion limit exceeded" => {
                return Some(Pos::from_marker(*e.marker()));
            }
            Err(_) => return None,
        };
        match event {
            (Event::SequenceStart(..) | Event::MappingStart(..), mark) => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(Pos::from_marker(mark));
                }
            }
            (Event::SequenceEnd | Event::MappingEnd, _) => depth = depth.saturating_sub(1),
            (Event::StreamEnd, _) => return None,
            _ => {}
        }
    }
}

/// Whether the YAML library reads an unquoted `text` as a whole number
/// whose decimal form is not `text`: a hexadecimal, octal or binary number,
/// or one with a `+` sign.
fn integer_read_otherwise(text: &str) -> bool {
    // Only text that can be a number is handed to the library.
    if !text.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-') {
        return false;
    }
    match serde_norway::from_str::<serde_norway::Value>(text) {
        Ok(serde_norway::Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string() != text,
        _ => false,
    }
}

enum Frame {
    Map {
        path: Path,
        key: Option<Seg>,
    },
    Seq {
        path: Path,
        next: usize,
    },
    /// A complex (non-scalar) key, which no path can name.
    Skip,
}

struct Recorder {
    locations: Locations,
    stack: Vec<Frame>,
    documents: usize,
}

impl Recorder {
    /// The path of the node that starts now, or `None` when it is a key
    /// (recorded separately) or inside something no path can name.
    fn node_path(&mut self, scalar_key: Option<&str>, mark: Marker) -> Option<Path> {
        match self.stack.last_mut() {
            None => (self.documents == 1).then(Path::root),
            Some(Frame::Skip) => None,
            Some(Frame::Seq { path, next }) => {
                let child = path.index(*next);
                *next += 1;
                Some(child)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(seg) => {
                    let mut child = path.clone();
                    child.0.push(seg);
                    Some(child)
                }
                None => {
                    // This node is a key.
                    let seg = Seg::Key(scalar_key.unwrap_or("?").to_owned());
                    let mut child = path.clone();
                    child.0.push(seg.clone());
                    let pos = Pos::from_marker(mark);
                    if let Some(first) = self.locations.keys.insert(child.clone(), pos) {
                        self.locations.duplicates.push((child, first, pos));
                    }
                    // A block mapping is reported where its indicator was
                    // recognised, at the first key's `:`; its first key is
                    // where a reader looks for it.
                    if let Some(start) = self.locations.values.get_mut(path)
                        && (pos.line, pos.column) < (start.line, start.column)
                    {
                        *start = pos;
                    }
                    *key = Some(seg);
                    None
                }
            },
        }
    }

    fn is_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                self.locations.documents.push(Pos::from_marker(mark));
            }
            Event::Scalar(text, style, _, tag) => {
                let is_key = self.is_key_position();
                let path = self.node_path(Some(&text), mark);
                if !is_key && let Some(path) = path {
                    // A tagged scalar (`!!str 0x10`) is read as its tag says.
                    if style == TScalarStyle::Plain
                        && tag.is_none()
                        && integer_read_otherwise(&text)
                    {
                        self.locations.renumbered.push(path.clone());
                    }
                    // A value left empty (`header:` and nothing after it)
                    // is a null the parser places where the next token
                    // starts, often the next key's line; it is placed at
                    // its own key instead. An explicit `~` is on that line
                    // anyway.
                    let pos = match self.locations.keys.get(&path) {
                        Some(key) if text.is_empty() || text == "~" => *key,
                        _ => Pos::from_marker(mark),
                    };
                    self.locations.values.insert(path, pos);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.node_path(None, mark) {
                    self.locations.values.insert(path, Pos::from_marker(mark));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(event, Event::MappingStart(..));
                let frame = if self.is_key_position() {
                    // A complex key: its contents have no path, and the
                    // value after it is filed under `?`.
                    self.node_path(None, mark);
                    Frame::Skip
                } else {
                    match self.node_path(None, mark) {
                        Some(path) => {
                            self.locations
                                .values
                                .insert(path.clone(), Pos::from_marker(mark));
                            if is_map {
                                Frame::Map { path, key: None }
                            } else {
                                Frame::Seq { path, next: 0 }
                            }
                        }
                        None => Frame::Skip,
                    }
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}
