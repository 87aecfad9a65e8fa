//! The lexical view of a template: its `{{ }}` and `{% %}` tags read as
//! tokens, with string literals apart from code. The checks at load that
//! need no engine read templates through it: which statements a template
//! uses, whether it joins or loops, which filters, tests and methods it
//! names (in every branch, taken or not), and header lookups by a name no
//! request has.

use std::collections::BTreeSet;

/// One token of a tag's code.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// A run of letters, digits and underscores: a name, a keyword or a
    /// number.
    Word(String),
    /// A string literal's content.
    Text(String),
    /// Any other character but whitespace.
    Other(char),
}

/// One `{{ }}` (`prints`) or `{% %}` tag.
#[derive(Debug)]
pub(super) struct Tag {
    prints: bool,
    tokens: Vec<Token>,
}

impl Tag {
    /// The tokens without the whitespace control marks (`-`, `+`) that may
    /// open or close the tag.
    fn code(&self) -> &[Token] {
        let mark = |token: &Token| matches!(token, Token::Other('-' | '+'));
        let mut code = &self.tokens[..];
        if code.first().is_some_and(mark) {
            code = &code[1..];
        }
        if code.last().is_some_and(mark) {
            code = &code[..code.len() - 1];
        }
        code
    }

    /// The statement's keyword (`for`, `set`, `raw`) of a `{% %}` tag.
    fn keyword(&self) -> Option<&str> {
        match self.code().first() {
            Some(Token::Word(word)) if !self.prints => Some(word),
            _ => None,
        }
    }
}

/// The tags of a template, or of an expression read as one `{{ }}` tag.
pub(super) fn of_source(source: &str, expression: bool) -> Vec<Tag> {
    if expression {
        let (tokens, _) = lex(source, None);
        vec![Tag {
            prints: true,
            tokens,
        }]
    } else {
        template_tags(source)
    }
}

/// The tokens of `code` up to `close` (outside string literals) or its
/// end, and how many bytes of `code` they took, `close` included.
fn lex(code: &str, close: Option<&str>) -> (Vec<Token>, usize) {
    let mut tokens = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        if let Some(close) = close
            && code[index..].starts_with(close)
        {
            return (tokens, index + close.len());
        }
        if c == '\'' || c == '"' {
            let mut text = String::new();
            while let Some((_, inner)) = chars.next() {
                match inner {
                    // An escaped character, quote or not.
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            text.push(escaped);
                        }
                    }
                    _ if inner == c => break,
                    _ => text.push(inner),
                }
            }
            tokens.push(Token::Text(text));
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = String::from(c);
            while let Some(&(_, next)) = chars.peek() {
                if !(next.is_alphanumeric() || next == '_') {
                    break;
                }
                word.push(next);
                chars.next();
            }
            tokens.push(Token::Word(word));
        } else if !c.is_whitespace() {
            tokens.push(Token::Other(c));
        }
    }
    (tokens, code.len())
}

/// Whether a template joins values with `~` in a tag that prints, or loops
/// with `for`: there a missing value prints as nothing without passing
/// through the formatter or a filter, so a strict field cannot catch it.
pub fn joins_or_loops(source: &str) -> bool {
    template_tags(source).iter().any(|tag| {
        (tag.prints && tag.tokens.contains(&Token::Other('~'))) || tag.keyword() == Some("for")
    })
}

/// The `{{ }}` and `{% %}` tags of a template, each read up to the first
/// closing mark outside a string literal. Comments (`{# #}`) and what a
/// `{% raw %}` block holds are text, not tags.
fn template_tags(source: &str) -> Vec<Tag> {
    let mut tags = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find('{') {
        let after = &rest[at..];
        let (prints, close) = if after.starts_with("{{") {
            (true, "}}")
        } else if after.starts_with("{%") {
            (false, "%}")
        } else if after.starts_with("{#") {
            rest = after.find("#}").map_or("", |end| &after[end + 2..]);
            continue;
        } else {
            rest = &after[1..];
            continue;
        };
        let (tokens, taken) = lex(&after[2..], Some(close));
        rest = &after[2 + taken..];
        let tag = Tag { prints, tokens };
        if tag.keyword() == Some("raw") && tag.code().len() == 1 {
            // What a raw block holds is text, quotes and all: it ends at the
            // first `{% endraw %}`.
            rest = after_endraw(rest);
            continue;
        }
        tags.push(tag);
    }
    tags
}

/// Whether a template has a statement whose reads the static analysis
/// cannot be trusted to report: one that assigns a name (`set`, `with`, a
/// macro or call block's arguments), or takes an expression the analysis
/// skips (`filter` and `autoescape` blocks).
pub(super) fn uses_statements_the_analysis_misreads(source: &str) -> bool {
    const STATEMENTS: &[&str] = &["set", "with", "macro", "call", "filter", "autoescape"];
    template_tags(source).iter().any(|tag| {
        tag.keyword()
            .is_some_and(|keyword| STATEMENTS.contains(&keyword))
    })
}

/// The statement of a template that would pull in another template
/// (`include`, `import`, `from`, `extends`), if it has one.
pub(super) fn pulls_in_another_template(source: &str) -> Option<String> {
    const STATEMENTS: &[&str] = &["include", "import", "from", "extends"];
    template_tags(source)
        .iter()
        .filter_map(Tag::keyword)
        .find(|keyword| STATEMENTS.contains(keyword))
        .map(str::to_owned)
}

/// The filters, tests and methods a template names.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Calls {
    pub filters: BTreeSet<String>,
    pub tests: BTreeSet<String>,
    pub methods: BTreeSet<String>,
}

/// The names a template's tags call as filters (`| lower`, `{% filter
/// upper %}`), tests (`is defined`, `is not none`) and methods
/// (`.startswith(`), but those of the objects minijinja itself makes
/// (`loop.cycle(`).
pub(super) fn named_calls(tags: &[Tag]) -> Calls {
    let mut calls = Calls::default();
    for tag in tags {
        let tokens = tag.code();
        let word = |at: usize| match tokens.get(at) {
            Some(Token::Word(word)) if !word.starts_with(|c: char| c.is_ascii_digit()) => {
                Some(word.as_str())
            }
            _ => None,
        };
        let other = |at: usize| match tokens.get(at) {
            Some(Token::Other(c)) => Some(*c),
            _ => None,
        };
        if tag.keyword() == Some("filter")
            && let Some(name) = word(1)
        {
            calls.filters.insert(name.to_owned());
        }
        for at in 0..tokens.len() {
            // An attribute named like a keyword (`body.is`) is no operator.
            let attribute = at > 0 && other(at - 1) == Some('.');
            match (other(at), word(at)) {
                (Some('|'), _) => {
                    if let Some(name) = word(at + 1) {
                        calls.filters.insert(name.to_owned());
                    }
                }
                (_, Some("is")) if !attribute => {
                    let name_at = if word(at + 1) == Some("not") {
                        at + 2
                    } else {
                        at + 1
                    };
                    if let Some(name) = word(name_at) {
                        calls.tests.insert(name.to_owned());
                    }
                }
                (Some('.'), _) => {
                    let own_object = at > 0 && matches!(word(at - 1), Some("loop" | "self"));
                    if let (Some(name), Some('(')) = (word(at + 1), other(at + 2))
                        && !own_object
                    {
                        calls.methods.insert(name.to_owned());
                    }
                }
                _ => {}
            }
        }
    }
    calls
}

/// A header looked up by a name no request has, described with the
/// lookup that works: `headers` holds lower-case names, and `headers.x-a`
/// is a subtraction, not the header `x-a`.
pub(super) fn header_misuse(tags: &[Tag]) -> Option<String> {
    for tag in tags {
        let tokens = tag.code();
        for (at, token) in tokens.iter().enumerate() {
            // `body.headers` is the body's, not the request's.
            let request_headers = *token == Token::Word("headers".into())
                && (at == 0 || tokens[at - 1] != Token::Other('.'));
            if !request_headers {
                continue;
            }
            if let Some(detail) = misused_lookup(&tokens[at + 1..]) {
                return Some(detail);
            }
        }
    }
    None
}

/// What is wrong with the lookup `rest` makes in `headers`, if anything.
fn misused_lookup(rest: &[Token]) -> Option<String> {
    let upper_case = |name: &str| name.chars().any(char::is_uppercase);
    let lower_case = |written: &str, name: &str| {
        Some(format!(
            "`headers` holds header names in lower case, so `{written}` is never defined; write `headers['{}']`",
            name.to_lowercase()
        ))
    };
    match rest {
        [Token::Other('['), Token::Text(name), Token::Other(']'), ..] if upper_case(name) => {
            lower_case(&format!("headers['{name}']"), name)
        }
        [
            Token::Other('.'),
            Token::Word(get),
            Token::Other('('),
            Token::Text(name),
            ..,
        ] if get == "get" && upper_case(name) => {
            lower_case(&format!("headers.get('{name}')"), name)
        }
        [
            Token::Other('.'),
            Token::Word(first),
            Token::Other('-'),
            Token::Word(_),
            ..,
        ] => {
            // The name runs on as long as words and dashes alternate.
            let mut name = first.clone();
            for pair in rest[2..].chunks(2) {
                match pair {
                    [Token::Other('-'), Token::Word(word)] => {
                        name.push('-');
                        name.push_str(word);
                    }
                    _ => break,
                }
            }
            Some(format!(
                "`headers.{name}` subtracts from `headers.{first}`; a header whose name has a `-` is read as `headers['{}']`",
                name.to_lowercase()
            ))
        }
        [Token::Other('.'), Token::Word(name), ..] if upper_case(name) => {
            lower_case(&format!("headers.{name}"), name)
        }
        _ => None,
    }
}

/// The text after the `{% endraw %}` that ends a raw block whose content
/// starts `text`, or nothing when the block is never ended. As Jinja reads
/// a raw block, only an `endraw` tag ends it: any other `{%` in it is text.
fn after_endraw(text: &str) -> &str {
    // As minijinja's lexer reads the end tag: at most one `-` or `+` right
    // after `{%` and right before `%}`, ASCII whitespace around the name.
    let spaces = |text: &'_ str| -> usize {
        text.len()
            - text
                .trim_start_matches(|c: char| c.is_ascii_whitespace())
                .len()
    };
    let mut rest = text;
    while let Some(at) = rest.find("{%") {
        rest = &rest[at + 2..];
        let tag = rest.strip_prefix(['-', '+']).unwrap_or(rest);
        let Some(after_name) = tag[spaces(tag)..].strip_prefix("endraw") else {
            continue;
        };
        let after_name = &after_name[spaces(after_name)..];
        let after_name = after_name.strip_prefix(['-', '+']).unwrap_or(after_name);
        if let Some(after_tag) = after_name.strip_prefix("%}") {
            return after_tag;
        }
    }
    ""
}
