//! The roles script of a `globals` backup (the output of `pg_dumpall --globals-only`), read
//! without psql.
//!
//! The script comes from the backup storage, so it is untrusted: piped into psql, a line
//! like `\! cmd` would run `cmd` on the restoring host. Instead, [`parse`] splits it into
//! statements (quotes, `E''` strings, quoted identifiers, dollar quotes and `--` comments
//! read the way the server reads them) and accepts only the statements pg_dumpall writes:
//! `CREATE ROLE`, `ALTER ROLE`, role membership `GRANT`s, `CREATE TABLESPACE`, `ALTER
//! TABLESPACE ... SET`, privileges on tablespaces and parameters, `COMMENT ON
//! ROLE/TABLESPACE`, the session `SET`s at the top and `SELECT pg_catalog.set_config(...)`.
//! The `\restrict KEY` / `\unrestrict KEY` guard lines of PostgreSQL 15.14+ are recognised
//! and skipped. Anything else refuses the whole script before any statement runs. The
//! accepted statements are then sent one by one through the protocol (see
//! `restore::run_globals`).

use std::collections::HashSet;

/// Largest roles script drkit reads (a real one is a few KiB per role).
pub const MAX_SCRIPT: usize = 64 << 20;

/// Settings whose value names shared libraries the server loads: never set from an archive.
const LIBRARY_SETTINGS: &[&str] = &[
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
    "dynamic_library_path",
];

/// What an accepted statement does (to skip what already exists on the destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `SET ...` or `SELECT pg_catalog.set_config(...)`: a session setting.
    Session,
    /// `CREATE ROLE name ...`
    CreateRole(String),
    /// `ALTER ROLE name ...` (attributes, password or settings).
    AlterRole(String),
    /// `COMMENT ON ROLE name ...`
    CommentRole(String),
    /// `GRANT role, ... TO member, ...`: role membership.
    GrantRoles {
        /// The granted roles.
        roles: Vec<String>,
        /// The members.
        members: Vec<String>,
    },
    /// `CREATE TABLESPACE name ...`
    CreateTablespace(String),
    /// `ALTER TABLESPACE name SET (...)`, `COMMENT ON TABLESPACE name ...`, and privileges
    /// on it.
    Tablespace(String),
    /// `GRANT/REVOKE ... ON PARAMETER ...`
    ParameterPrivilege,
}

/// One accepted statement of the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Line (from 1) where it starts.
    pub line: usize,
    /// Its text, without comments and without the final `;`.
    pub sql: String,
    /// What it does.
    pub action: Action,
}

/// Why a script is refused: the line and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Line (from 1).
    pub line: usize,
    /// What is wrong there.
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

/// A piece of the script, as split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// An SQL statement (comments removed, without its `;`), and the line where it starts.
    Sql {
        /// Line (from 1).
        line: usize,
        /// The text.
        text: String,
    },
    /// A `\restrict KEY` (or `\unrestrict KEY` when `restrict` is false) guard line.
    Guard {
        /// Line (from 1).
        line: usize,
        /// `\restrict` rather than `\unrestrict`.
        restrict: bool,
    },
}

/// Whitespace as the server's lexer knows it (ASCII only).
fn space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

/// A psql guard line: `\restrict KEY` or `\unrestrict KEY`, KEY made of letters and digits.
fn guard_line(line: &str) -> Option<bool> {
    let mut words = line.split_ascii_whitespace();
    let restrict = match words.next()? {
        "\\restrict" => true,
        "\\unrestrict" => false,
        _ => return None,
    };
    let key = words.next()?;
    if words.next().is_some() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some(restrict)
}

/// The dollar-quote tag starting at `chars[i]` (`$$`, `$tag$`), if one does.
fn dollar_tag(chars: &[char], i: usize) -> Option<String> {
    let mut j = i + 1;
    if j < chars.len() && chars[j] != '$' && !ident_start(chars[j]) {
        return None;
    }
    while j < chars.len() && chars[j] != '$' {
        if !(ident_char(chars[j]) && chars[j] != '$') {
            return None;
        }
        j += 1;
    }
    (j < chars.len()).then(|| chars[i..=j].iter().collect())
}

/// Split a script into statements and guard lines, reading quotes the way the server does
/// (with `standard_conforming_strings` on): `'...'` with `''`, `E'...'` with backslash
/// escapes, `"..."` with `""`, `$$...$$` and `$tag$...$tag$`; `--` comments are dropped. A
/// backslash outside quotes (a psql meta-command), a `/*` comment, a NUL, an unclosed quote
/// or a last statement without its `;` is refused.
pub fn split(script: &str) -> Result<Vec<Piece>, Refusal> {
    let mut s = Splitter {
        chars: script.chars().collect(),
        out: Vec::new(),
        cur: String::new(),
        blank: true,
        cur_line: 0,
        line: 1,
        i: 0,
    };
    while s.i < s.chars.len() {
        s.step()?;
    }
    if !s.blank {
        return refuse(
            s.cur_line,
            "the last statement does not end with ; (the script is cut or altered)".into(),
        );
    }
    Ok(s.out)
}

/// Refuse the script at `line` because of `why`.
fn refuse<T>(line: usize, why: String) -> Result<T, Refusal> {
    Err(Refusal { line, why })
}

/// Where [`split`] is in the script, and the statement it is reading.
struct Splitter {
    /// The script.
    chars: Vec<char>,
    /// The pieces split so far.
    out: Vec<Piece>,
    /// The statement being read.
    cur: String,
    /// Whether `cur` holds nothing but whitespace (and dropped comments).
    blank: bool,
    /// Line where `cur` starts.
    cur_line: usize,
    /// Line of `chars[i]`.
    line: usize,
    /// The next character to read.
    i: usize,
}

impl Splitter {
    /// Read what starts at the next character: a character, a comment, a quote, a guard line.
    fn step(&mut self) -> Result<(), Refusal> {
        let (c, i) = (self.chars[self.i], self.i);
        if c == '\0' {
            return refuse(self.line, "a NUL character".into());
        }
        if self.blank && !space(c) {
            self.cur_line = self.line;
        }
        match c {
            '\n' => {
                self.line += 1;
                if !self.blank {
                    self.cur.push(c);
                }
                self.i += 1;
            }
            ';' => self.end_statement(),
            '-' if self.chars.get(i + 1) == Some(&'-') => self.skip_comment(),
            '/' if self.chars.get(i + 1) == Some(&'*') => {
                return refuse(
                    self.line,
                    "a /* comment, which pg_dumpall does not write".into(),
                );
            }
            '\\' => self.guard()?,
            '\'' | '"' => self.quoted(c)?,
            '$' if !(i > 0 && ident_char(self.chars[i - 1]))
                && dollar_tag(&self.chars, i).is_some() =>
            {
                self.dollar_quoted()?
            }
            _ => {
                if !space(c) {
                    self.blank = false;
                }
                if !self.blank {
                    self.cur.push(c);
                }
                self.i += 1;
            }
        }
        Ok(())
    }

    /// A `;`: the statement read so far, unless blank, is a piece.
    fn end_statement(&mut self) {
        if !self.blank {
            self.out.push(Piece::Sql {
                line: self.cur_line,
                text: self.cur.trim_matches(space).to_string(),
            });
        }
        self.cur.clear();
        self.blank = true;
        self.i += 1;
    }

    /// A `--` comment: skipped to the end of its line, a space in the statement.
    fn skip_comment(&mut self) {
        while self.i < self.chars.len() && self.chars[self.i] != '\n' {
            self.i += 1;
        }
        if !self.blank {
            self.cur.push(' ');
        }
    }

    /// A backslash: a guard line alone on its line between statements is a piece; any
    /// other psql meta-command is refused.
    fn guard(&mut self) -> Result<(), Refusal> {
        let (chars, i) = (&self.chars, self.i);
        let end = chars[i..]
            .iter()
            .position(|&c| c == '\n')
            .map_or(chars.len(), |p| i + p);
        let text: String = chars[i..end].iter().collect();
        let line_start = chars[..i]
            .iter()
            .rposition(|&c| c == '\n')
            .map_or(0, |p| p + 1);
        let alone = chars[line_start..i].iter().all(|&c| space(c));
        match guard_line(&text) {
            Some(restrict) if alone && self.blank => {
                self.out.push(Piece::Guard {
                    line: self.line,
                    restrict,
                });
                self.i = end;
                Ok(())
            }
            _ => {
                let cmd: String = text.chars().take(40).collect();
                refuse(
                    self.line,
                    format!("psql meta-command {cmd:?}: only SQL statements are run"),
                )
            }
        }
    }

    /// A `'...'` string (`E'...'` with backslash escapes) or a `"..."` name, opened by `q`,
    /// read to its closing quote.
    fn quoted(&mut self, q: char) -> Result<(), Refusal> {
        let (start_line, i) = (self.line, self.i);
        let escapes = q == '\''
            && i > 0
            && matches!(self.chars[i - 1], 'e' | 'E')
            && !(i > 1 && ident_char(self.chars[i - 2]));
        self.blank = false;
        self.cur.push(q);
        self.i += 1;
        loop {
            let Some(&d) = self.chars.get(self.i) else {
                return refuse(start_line, format!("a {q} quote is never closed"));
            };
            if d == '\0' {
                return refuse(self.line, "a NUL character".into());
            }
            if d == '\n' {
                self.line += 1;
            }
            self.cur.push(d);
            self.i += 1;
            if escapes && d == '\\' {
                if let Some(&e) = self.chars.get(self.i) {
                    if e == '\n' {
                        self.line += 1;
                    }
                    if e == '\0' {
                        return refuse(self.line, "a NUL character".into());
                    }
                    self.cur.push(e);
                    self.i += 1;
                }
            } else if d == q {
                if self.chars.get(self.i) == Some(&q) {
                    self.cur.push(q);
                    self.i += 1;
                } else {
                    break;
                }
            }
        }
        Ok(())
    }

    /// A dollar quote (`$$...$$`, `$tag$...$tag$`), read to its closing tag.
    fn dollar_quoted(&mut self) -> Result<(), Refusal> {
        let i = self.i;
        let tag: Vec<char> = dollar_tag(&self.chars, i)
            .expect("checked")
            .chars()
            .collect();
        let start_line = self.line;
        let body_start = i + tag.len();
        let close = (body_start..=self.chars.len().saturating_sub(tag.len()))
            .find(|&j| self.chars[j..j + tag.len()] == tag[..]);
        let Some(close) = close else {
            return refuse(start_line, "a dollar quote is never closed".into());
        };
        let end = close + tag.len();
        for &d in &self.chars[i..end] {
            if d == '\0' {
                return refuse(self.line, "a NUL character".into());
            }
            if d == '\n' {
                self.line += 1;
            }
            self.cur.push(d);
        }
        self.blank = false;
        self.i = end;
        Ok(())
    }
}

/// A token of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An unquoted word, folded to lower case.
    Word(String),
    /// A `"quoted"` identifier.
    Quoted(String),
    /// A string literal of any kind, with its contents (`''` read as `'`; `E''` escapes
    /// left as written).
    Str(String),
    /// A number.
    Num,
    /// One punctuation character.
    Punct(char),
}

/// Tokens of one statement (as split by [`split`]: no comment, no `;`).
fn tokens(sql: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if space(c) {
            i += 1;
            continue;
        }
        let (tok, next) =
            if c == '\'' || ((c == 'e' || c == 'E') && chars.get(i + 1) == Some(&'\'')) {
                string_token(&chars, i, c != '\'')?
            } else if c == '"' {
                quoted_token(&chars, i)?
            } else if c == '$' {
                dollar_token(&chars, i)?
            } else if ident_start(c) {
                word_token(&chars, i)
            } else if c.is_ascii_digit() {
                number_token(&chars, i)?
            } else if "=,().-+".contains(c) {
                (Tok::Punct(c), i + 1)
            } else {
                return Err(format!("unexpected character {c:?}"));
            };
        out.push(tok);
        i = next;
    }
    Ok(out)
}

/// The string literal starting at `chars[i]` (`'...'`, or `E'...'` when `escapes`), and
/// where it ends.
fn string_token(chars: &[char], mut i: usize, escapes: bool) -> Result<(Tok, usize), String> {
    i += if escapes { 2 } else { 1 };
    let mut text = String::new();
    loop {
        match chars.get(i) {
            None => return Err("an unclosed string".into()),
            Some('\\') if escapes => {
                text.extend(chars.get(i..i + 2).unwrap_or(&chars[i..]));
                i += 2
            }
            Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                text.push('\'');
                i += 2
            }
            Some('\'') => {
                i += 1;
                break;
            }
            Some(&d) => {
                text.push(d);
                i += 1
            }
        }
    }
    Ok((Tok::Str(text), i))
}

/// The `"quoted"` identifier starting at `chars[i]`, and where it ends.
fn quoted_token(chars: &[char], mut i: usize) -> Result<(Tok, usize), String> {
    let mut name = String::new();
    i += 1;
    loop {
        match chars.get(i) {
            None => return Err("an unclosed quoted name".into()),
            Some('"') if chars.get(i + 1) == Some(&'"') => {
                name.push('"');
                i += 2;
            }
            Some('"') => {
                i += 1;
                break;
            }
            Some(&d) => {
                name.push(d);
                i += 1;
            }
        }
    }
    Ok((Tok::Quoted(name), i))
}

/// The dollar-quoted string starting at `chars[i]` (a `$`), and where it ends.
fn dollar_token(chars: &[char], i: usize) -> Result<(Tok, usize), String> {
    let tag: Vec<char> = dollar_tag(chars, i)
        .ok_or("a $ that starts no dollar quote")?
        .chars()
        .collect();
    let body = i + tag.len();
    let close = (body..=chars.len().saturating_sub(tag.len()))
        .find(|&j| chars[j..j + tag.len()] == tag[..])
        .ok_or("an unclosed dollar quote")?;
    Ok((
        Tok::Str(chars[body..close].iter().collect()),
        close + tag.len(),
    ))
}

/// The unquoted word starting at `chars[i]`, folded to lower case, and where it ends.
fn word_token(chars: &[char], mut i: usize) -> (Tok, usize) {
    let start = i;
    while i < chars.len() && ident_char(chars[i]) {
        i += 1;
    }
    let word: String = chars[start..i].iter().collect();
    (Tok::Word(word.to_ascii_lowercase()), i)
}

/// The number starting at `chars[i]`, and where it ends; letters right after it are refused.
fn number_token(chars: &[char], mut i: usize) -> Result<(Tok, usize), String> {
    while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
        i += 1;
    }
    if i < chars.len() && ident_char(chars[i]) {
        return Err("a number followed by letters".into());
    }
    Ok((Tok::Num, i))
}

/// Reads tokens against the shapes pg_dumpall writes.
struct Cursor<'a> {
    toks: &'a [Tok],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<&'a Tok> {
        self.toks.get(self.at)
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }

    fn eat_word(&mut self, w: &str) -> bool {
        let yes = self.is_word(w);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn word(&mut self, w: &str) -> Result<(), String> {
        if self.eat_word(w) {
            Ok(())
        } else {
            Err(format!("expected {}", w.to_ascii_uppercase()))
        }
    }

    fn eat(&mut self, p: char) -> bool {
        let yes = self.peek() == Some(&Tok::Punct(p));
        if yes {
            self.at += 1;
        }
        yes
    }

    /// A name: an unquoted word (folded) or a quoted identifier.
    fn name(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Tok::Word(w)) => {
                self.at += 1;
                Ok(w.clone())
            }
            Some(Tok::Quoted(q)) => {
                self.at += 1;
                Ok(q.clone())
            }
            _ => Err("expected a name".into()),
        }
    }

    /// `name[.name...]`
    fn dotted(&mut self) -> Result<String, String> {
        let mut n = self.name()?;
        while self.eat('.') {
            n.push('.');
            n.push_str(&self.name()?);
        }
        Ok(n)
    }

    fn names(&mut self) -> Result<Vec<String>, String> {
        let mut v = vec![self.name()?];
        while self.eat(',') {
            v.push(self.name()?);
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<(), String> {
        if matches!(self.peek(), Some(Tok::Str(_))) {
            self.at += 1;
            Ok(())
        } else {
            Err("expected a string".into())
        }
    }

    fn string_or_null(&mut self) -> Result<(), String> {
        if self.eat_word("null") {
            Ok(())
        } else {
            self.string()
        }
    }

    /// A setting's value: words, names, strings, numbers, signed, separated by commas.
    fn value_list(&mut self) -> Result<(), String> {
        loop {
            let _ = self.eat('-') || self.eat('+');
            match self.peek() {
                Some(Tok::Word(_) | Tok::Quoted(_) | Tok::Str(_) | Tok::Num) => self.at += 1,
                _ => return Err("expected a value".into()),
            }
            while self.eat('.') {
                self.name()?;
            }
            if !self.eat(',') {
                return Ok(());
            }
        }
    }

    fn end(&self) -> Result<(), String> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(format!("unexpected {} in the statement", describe(t))),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => w.to_ascii_uppercase(),
        Tok::Quoted(q) => format!("\"{q}\""),
        Tok::Str(_) => "string".into(),
        Tok::Num => "number".into(),
        Tok::Punct(p) => format!("{p:?}"),
    }
}

/// `CREATE ROLE` / `ALTER ROLE` attributes.
fn role_options(c: &mut Cursor) -> Result<(), String> {
    c.eat_word("with");
    const FLAGS: &[&str] = &[
        "superuser",
        "nosuperuser",
        "createdb",
        "nocreatedb",
        "createrole",
        "nocreaterole",
        "inherit",
        "noinherit",
        "login",
        "nologin",
        "replication",
        "noreplication",
        "bypassrls",
        "nobypassrls",
    ];
    while c.peek().is_some() {
        if FLAGS.iter().any(|f| c.eat_word(f)) {
            continue;
        }
        if c.eat_word("connection") {
            c.word("limit")?;
            c.eat('-');
            if c.peek() != Some(&Tok::Num) {
                return Err("expected a number after CONNECTION LIMIT".into());
            }
            c.at += 1;
        } else if c.eat_word("encrypted") {
            c.word("password")?;
            c.string_or_null()?;
        } else if c.eat_word("password") {
            c.string_or_null()?;
        } else if c.eat_word("valid") {
            c.word("until")?;
            c.string()?;
        } else {
            return Err(format!(
                "unexpected {} among the role's attributes",
                describe(c.peek().expect("not at the end"))
            ));
        }
    }
    Ok(())
}

/// `SET name = value` / `SET name TO value`, after `SET`.
fn setting(c: &mut Cursor) -> Result<String, String> {
    let name = c.dotted()?;
    if !(c.eat('=') || c.eat_word("to")) {
        return Err("expected = or TO".into());
    }
    c.value_list()?;
    Ok(name)
}

/// Privileges, `ON TABLESPACE x` or `ON PARAMETER x, ...`, then the grantees, for GRANT (TO)
/// or REVOKE (FROM).
fn privilege(c: &mut Cursor, grant: bool) -> Result<Action, String> {
    if !grant && c.eat_word("grant") {
        c.word("option")?;
        c.word("for")?;
    }
    loop {
        match c.peek() {
            Some(Tok::Word(w)) if w == "on" => break,
            Some(Tok::Word(w))
                if ["all", "privileges", "create", "set", "alter", "system"]
                    .contains(&w.as_str()) =>
            {
                c.at += 1
            }
            Some(Tok::Punct(',')) => c.at += 1,
            _ => return Err("expected privileges (ALL, CREATE, SET, ALTER SYSTEM)".into()),
        }
    }
    c.word("on")?;
    let action = if c.eat_word("tablespace") {
        let names = c.names()?;
        if names.len() != 1 {
            return Err("privileges on several tablespaces at once".into());
        }
        Action::Tablespace(names[0].clone())
    } else if c.eat_word("parameter") {
        c.dotted()?;
        while c.eat(',') {
            c.dotted()?;
        }
        Action::ParameterPrivilege
    } else {
        return Err("privileges on something other than a tablespace or a parameter".into());
    };
    c.word(if grant { "to" } else { "from" })?;
    loop {
        c.eat_word("group");
        c.name()?;
        if !c.eat(',') {
            break;
        }
    }
    if grant && c.eat_word("with") {
        c.word("grant")?;
        c.word("option")?;
    }
    if c.eat_word("granted") {
        c.word("by")?;
        c.name()?;
    }
    if !grant {
        let _ = c.eat_word("cascade") || c.eat_word("restrict");
    }
    c.end()?;
    Ok(action)
}

/// What statement `sql` is, if it is one that pg_dumpall writes in a roles script.
fn classify(sql: &str) -> Result<Action, String> {
    let toks = tokens(sql)?;
    let mut c = Cursor { toks: &toks, at: 0 };
    let first = match c.peek() {
        Some(Tok::Word(w)) => w.clone(),
        _ => return Err("not an SQL command".into()),
    };
    c.at += 1;
    let action = match first.as_str() {
        "set" => session_set(&mut c)?,
        "select" => set_config(&toks)?,
        "create" if c.eat_word("role") => {
            let name = c.name()?;
            role_options(&mut c)?;
            Action::CreateRole(name)
        }
        "create" if c.eat_word("tablespace") => create_tablespace(&mut c)?,
        "alter" if c.eat_word("role") || c.eat_word("user") => alter_role(&mut c)?,
        "alter" if c.eat_word("tablespace") => {
            let name = c.name()?;
            c.word("set")?;
            tablespace_options(&mut c)?;
            c.end()?;
            Action::Tablespace(name)
        }
        "comment" => comment(&mut c)?,
        "grant" if !toks.contains(&Tok::Word("on".into())) => grant_roles(&mut c)?,
        "grant" => privilege(&mut c, true)?,
        "revoke" if toks.contains(&Tok::Word("on".into())) => privilege(&mut c, false)?,
        other => {
            return Err(format!(
                "{} is not a statement of a roles script (only CREATE/ALTER ROLE, GRANT, CREATE TABLESPACE, COMMENT and SET are)",
                other.to_ascii_uppercase()
            ))
        }
    };
    if let Action::CreateRole(_) | Action::AlterRole(_) = action {
        c.end()?;
    }
    Ok(action)
}

/// `SET name = value`, after `SET`: only the session settings pg_dumpall writes.
fn session_set(c: &mut Cursor) -> Result<Action, String> {
    if c.is_word("session") || c.is_word("role") || c.is_word("local") {
        return Err("SET SESSION/ROLE/LOCAL is not a roles script setting".into());
    }
    let name = setting(c)?;
    let value = &c.toks[c.at - 1];
    let ok = match name.as_str() {
        "client_encoding" => matches!(value, Tok::Str(v) | Tok::Word(v)
            if v.to_ascii_lowercase().replace(['-', '_'], "") == "utf8"),
        "standard_conforming_strings" => matches!(value, Tok::Word(w) if w == "on"),
        "default_transaction_read_only" => matches!(value, Tok::Word(w) if w == "off"),
        _ => false,
    };
    if !ok || c.toks.len() != 4 {
        return Err(format!(
            "SET {name} to this value is not one of the session settings pg_dumpall writes (client_encoding = 'UTF8', standard_conforming_strings = on, default_transaction_read_only = off)"
        ));
    }
    Ok(Action::Session)
}

/// A `SELECT` statement (`toks`): only `pg_catalog.set_config('search_path', '', false)`.
fn set_config(toks: &[Tok]) -> Result<Action, String> {
    let want = [
        Tok::Word("pg_catalog".into()),
        Tok::Punct('.'),
        Tok::Word("set_config".into()),
        Tok::Punct('('),
        Tok::Str("search_path".into()),
        Tok::Punct(','),
        Tok::Str(String::new()),
        Tok::Punct(','),
        Tok::Word("false".into()),
        Tok::Punct(')'),
    ];
    if toks[1..] != want[..] {
        return Err("a SELECT other than pg_catalog.set_config('search_path', '', false)".into());
    }
    Ok(Action::Session)
}

/// `CREATE TABLESPACE name [OWNER role] LOCATION '...' [WITH (...)]`, after `TABLESPACE`.
fn create_tablespace(c: &mut Cursor) -> Result<Action, String> {
    let name = c.name()?;
    if c.eat_word("owner") {
        c.name()?;
    }
    c.word("location")?;
    c.string()?;
    if c.eat_word("with") {
        tablespace_options(c)?;
    }
    c.end()?;
    Ok(Action::CreateTablespace(name))
}

/// `ALTER ROLE name [IN DATABASE db] SET ...` or `ALTER ROLE name attributes`, after
/// `ROLE` (or `USER`); settings that load libraries are refused. The caller checks the end.
fn alter_role(c: &mut Cursor) -> Result<Action, String> {
    let name = c.name()?;
    if c.is_word("in") || c.is_word("set") {
        if c.eat_word("in") {
            c.word("database")?;
            c.name()?;
        }
        c.word("set")?;
        let setting_name = setting(c)?;
        if LIBRARY_SETTINGS.contains(&setting_name.as_str()) {
            return Err(format!(
                "setting {setting_name} makes the server load libraries: drkit does not restore it"
            ));
        }
        c.end()?;
    } else {
        role_options(c)?;
    }
    Ok(Action::AlterRole(name))
}

/// `COMMENT ON ROLE/TABLESPACE name IS '...'`, after `COMMENT`.
fn comment(c: &mut Cursor) -> Result<Action, String> {
    c.word("on")?;
    let role = if c.eat_word("role") {
        true
    } else if c.eat_word("tablespace") {
        false
    } else {
        return Err("a COMMENT on something other than a role or a tablespace".into());
    };
    let name = c.name()?;
    c.word("is")?;
    c.string_or_null()?;
    c.end()?;
    Ok(if role {
        Action::CommentRole(name)
    } else {
        Action::Tablespace(name)
    })
}

/// `GRANT role, ... TO member, ... [WITH ...] [GRANTED BY role]`, after `GRANT`: role
/// membership.
fn grant_roles(c: &mut Cursor) -> Result<Action, String> {
    let roles = c.names()?;
    c.word("to")?;
    let members = c.names()?;
    if c.eat_word("with") {
        loop {
            if !(c.eat_word("admin") || c.eat_word("inherit") || c.eat_word("set")) {
                return Err("expected ADMIN, INHERIT or SET after WITH".into());
            }
            let _ = c.eat_word("option") || c.eat_word("true") || c.eat_word("false");
            if !c.eat(',') {
                break;
            }
        }
    }
    if c.eat_word("granted") {
        c.word("by")?;
        c.name()?;
    }
    c.end()?;
    Ok(Action::GrantRoles { roles, members })
}

/// `( name = value, ... )` of a tablespace.
fn tablespace_options(c: &mut Cursor) -> Result<(), String> {
    if !c.eat('(') {
        return Err("expected (".into());
    }
    loop {
        c.name()?;
        c.eat('=');
        let _ = c.eat('-');
        match c.peek() {
            Some(Tok::Word(_) | Tok::Str(_) | Tok::Num) => c.at += 1,
            _ => return Err("expected a value".into()),
        }
        if !c.eat(',') {
            break;
        }
    }
    if !c.eat(')') {
        return Err("expected )".into());
    }
    Ok(())
}

/// Read a whole roles script: every statement must be one that pg_dumpall writes, else the
/// first offending one refuses the script (and nothing of it may run).
pub fn parse(script: &str) -> Result<Vec<Statement>, Refusal> {
    let mut out = Vec::new();
    for piece in split(script)? {
        if let Piece::Sql { line, text } = piece {
            let action = classify(&text).map_err(|why| {
                let head: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                let head: String = head.chars().take(60).collect();
                Refusal {
                    line,
                    why: format!("{why} (in {head:?})"),
                }
            })?;
            out.push(Statement {
                line,
                sql: text,
                action,
            });
        }
    }
    Ok(out)
}

/// What exists on the destination: those roles, tablespaces and memberships are left as
/// they are.
#[derive(Debug, Clone, Default)]
pub struct Existing {
    /// Role names.
    pub roles: HashSet<String>,
    /// Tablespace names.
    pub tablespaces: HashSet<String>,
    /// (role, member) pairs.
    pub memberships: HashSet<(String, String)>,
}

impl Existing {
    /// Whether `s` should run: it creates or changes nothing that exists already. A
    /// membership grant of several roles or members runs when one pair is new.
    pub fn keep(&self, s: &Statement) -> bool {
        match &s.action {
            Action::Session | Action::ParameterPrivilege => true,
            Action::CreateRole(r) | Action::AlterRole(r) | Action::CommentRole(r) => {
                !self.roles.contains(r)
            }
            Action::CreateTablespace(t) | Action::Tablespace(t) => !self.tablespaces.contains(t),
            Action::GrantRoles { roles, members } => roles.iter().any(|r| {
                members
                    .iter()
                    .any(|m| !self.memberships.contains(&(r.clone(), m.clone())))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(line: usize, text: &str) -> Piece {
        Piece::Sql {
            line,
            text: text.into(),
        }
    }

    #[test]
    fn splits_like_the_server() {
        let cases: Vec<(&str, Vec<Piece>)> = vec![
            ("", vec![]),
            ("-- only a comment\n\n", vec![]),
            ("SELECT 1;", vec![sql(1, "SELECT 1")]),
            ("a;\n\nb;", vec![sql(1, "a"), sql(3, "b")]),
            ("x 'a;b''c;' y;", vec![sql(1, "x 'a;b''c;' y")]),
            ("x E'a\\';b' y;", vec![sql(1, "x E'a\\';b' y")]),
            // Not an E string: the e ends a word, so the backslash is a plain character.
            ("name'a\\';b;", vec![sql(1, "name'a\\'"), sql(1, "b")]),
            ("x \"a;\"\"b\" y;", vec![sql(1, "x \"a;\"\"b\" y")]),
            ("x $$a;'b$$ y;", vec![sql(1, "x $$a;'b$$ y")]),
            ("x $t$a;$$;$t$ y;", vec![sql(1, "x $t$a;$$;$t$ y")]),
            // A $ inside a word does not start a dollar quote.
            ("x$a$;y;", vec![sql(1, "x$a$"), sql(1, "y")]),
            ("x $1;", vec![sql(1, "x $1")]),
            ("a -- c; d\n;", vec![sql(1, "a")]),
            ("a '--;' b;", vec![sql(1, "a '--;' b")]),
            (
                "x 'multi\nline';\ny;",
                vec![sql(1, "x 'multi\nline'"), sql(3, "y")],
            ),
            (
                "\\restrict abc123\nSET a = b;\n\\unrestrict abc123\n",
                vec![
                    Piece::Guard {
                        line: 1,
                        restrict: true,
                    },
                    sql(2, "SET a = b"),
                    Piece::Guard {
                        line: 3,
                        restrict: false,
                    },
                ],
            ),
            // \restrict in the middle of the script, between statements: still a guard.
            (
                "a;\n  \\restrict K\nb;",
                vec![
                    sql(1, "a"),
                    Piece::Guard {
                        line: 2,
                        restrict: true,
                    },
                    sql(3, "b"),
                ],
            ),
        ];
        for (script, want) in cases {
            assert_eq!(split(script), Ok(want), "{script:?}");
        }
    }

    #[test]
    fn split_refusals() {
        let cases = [
            ("\\! touch /tmp/x\n", 1, "meta-command"),
            ("CREATE ROLE a;\n\\! touch /tmp/x\n", 2, "meta-command"),
            ("CREATE ROLE a; \\! touch /tmp/x\n", 1, "meta-command"),
            ("CREATE ROLE a \\g\n", 1, "meta-command"),
            (
                "CREATE ROLE a;\n\\copy x to program 'sh'\n",
                2,
                "meta-command",
            ),
            ("\\i /etc/passwd\n", 1, "meta-command"),
            ("\\restrict\n", 1, "meta-command"),
            ("\\restrict k extra\n", 1, "meta-command"),
            ("\\restrict k; \\! id\n", 1, "meta-command"),
            ("CREATE ROLE a\n\\restrict K\n;", 2, "meta-command"),
            ("\\unrestrict k\\! id\n", 1, "meta-command"),
            ("a 'open;\n", 1, "never closed"),
            ("a \"open;\n", 1, "never closed"),
            ("a $x$ open;\n", 1, "never closed"),
            ("a;\nb", 2, "does not end with ;"),
            ("a /* b */;", 1, "/* comment"),
            ("a\0;", 1, "NUL"),
        ];
        for (script, line, want) in cases {
            let e = split(script).unwrap_err();
            assert_eq!(e.line, line, "{script:?}: {e}");
            assert!(e.why.contains(want), "{script:?}: {e}");
        }
    }

    /// A roles script as Debian's pg_dumpall 15.14+ writes it.
    const REAL: &str = r#"--
-- PostgreSQL database cluster dump
--

\restrict dW9Oq6mTbBkfbhcXqhn3ZQ2Nabcdef

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:abc=$def=:ghi=';
CREATE ROLE drkit;
ALTER ROLE drkit WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS CONNECTION LIMIT 5 VALID UNTIL 'infinity';
CREATE ROLE "We""ird; DROP";
ALTER ROLE "We""ird; DROP" WITH NOSUPERUSER NOINHERIT NOLOGIN PASSWORD NULL;
COMMENT ON ROLE app IS 'the app''s role; -- not a comment';

--
-- User Configurations
--

--
-- User Config "app"
--

ALTER ROLE app SET search_path TO 'a', public;
ALTER ROLE app IN DATABASE appdb SET work_mem TO '64MB';
ALTER ROLE app SET statement_timeout TO '5s';

--
-- Role memberships
--

GRANT app TO drkit WITH ADMIN OPTION GRANTED BY drkit;
GRANT pg_read_all_data TO app GRANTED BY drkit;

--
-- Tablespaces
--

CREATE TABLESPACE fast OWNER drkit LOCATION '/srv/fast';
ALTER TABLESPACE fast SET (random_page_cost=1.1, effective_io_concurrency=200);
COMMENT ON TABLESPACE fast IS 'ssd';
GRANT ALL ON TABLESPACE fast TO app;
GRANT SET ON PARAMETER work_mem TO app;
REVOKE ALL ON TABLESPACE fast FROM PUBLIC;
SELECT pg_catalog.set_config('search_path', '', false);

\unrestrict dW9Oq6mTbBkfbhcXqhn3ZQ2Nabcdef

--
-- PostgreSQL database cluster dump complete
--

"#;

    #[test]
    fn a_real_script_is_accepted() {
        let st = parse(REAL).unwrap();
        let actions: Vec<Action> = st.iter().map(|s| s.action.clone()).collect();
        use Action::*;
        assert_eq!(
            actions,
            vec![
                Session,
                Session,
                Session,
                CreateRole("app".into()),
                AlterRole("app".into()),
                CreateRole("drkit".into()),
                AlterRole("drkit".into()),
                CreateRole("We\"ird; DROP".into()),
                AlterRole("We\"ird; DROP".into()),
                CommentRole("app".into()),
                AlterRole("app".into()),
                AlterRole("app".into()),
                AlterRole("app".into()),
                GrantRoles {
                    roles: vec!["app".into()],
                    members: vec!["drkit".into()]
                },
                GrantRoles {
                    roles: vec!["pg_read_all_data".into()],
                    members: vec!["app".into()]
                },
                CreateTablespace("fast".into()),
                Tablespace("fast".into()),
                Tablespace("fast".into()),
                Tablespace("fast".into()),
                ParameterPrivilege,
                Tablespace("fast".into()),
                Session,
            ]
        );
        assert_eq!(st[3].line, 16);
        assert_eq!(st[3].sql, "CREATE ROLE app");

        let existing = Existing {
            roles: ["drkit".to_string()].into(),
            tablespaces: HashSet::new(),
            memberships: [("app".to_string(), "drkit".to_string())].into(),
        };
        let kept: Vec<usize> = st
            .iter()
            .filter(|s| existing.keep(s))
            .map(|s| s.line)
            .collect();
        assert!(
            !kept.contains(&18) && !kept.contains(&19),
            "drkit is left alone"
        );
        assert!(kept.contains(&16) && kept.contains(&17), "app is created");
        assert!(
            !kept.contains(&40),
            "an existing membership is not granted again"
        );
        assert!(kept.contains(&41));
    }

    #[test]
    fn hostile_scripts_are_refused_with_their_line() {
        let cases = [
            // psql meta-commands, alone or after a statement.
            ("CREATE ROLE a;\n\\! touch /tmp/pwned\n", 2, "meta-command"),
            ("CREATE ROLE a; \\! touch /tmp/pwned\n", 1, "meta-command"),
            // A ; inside a quoted role name is part of the name, and the rest is refused.
            (
                "CREATE ROLE \"x;\";\nCREATE ROLE \"a\"; DROP DATABASE app; --\";\n",
                2,
                "DROP",
            ),
            ("SET client_encoding = 'UTF8';\nDROP ROLE app;\n", 2, "DROP"),
            (
                "COPY (SELECT 1) TO PROGRAM 'touch /tmp/pwned';\n",
                1,
                "COPY",
            ),
            (
                "CREATE ROLE a;\n\\restrict K\nCOPY x FROM PROGRAM 'id';\n\\unrestrict K\n",
                3,
                "COPY",
            ),
            ("DO $$BEGIN PERFORM 1; END$$;\n", 1, "DO"),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$SELECT 1$$;",
                1,
                "CREATE is not",
            ),
            ("ALTER SYSTEM SET archive_command = 'sh';", 1, "ALTER"),
            ("SET ROLE postgres;", 1, "SET SESSION/ROLE"),
            ("SET SESSION AUTHORIZATION postgres;", 1, "SET SESSION/ROLE"),
            ("RESET ROLE;", 1, "RESET"),
            ("SET standard_conforming_strings = off;", 1, "not one of"),
            ("SET client_encoding = 'SJIS';", 1, "not one of"),
            ("SET search_path = evil;", 1, "not one of"),
            (
                "SELECT pg_catalog.set_config('role', 'postgres', false);",
                1,
                "SELECT",
            ),
            ("SELECT lo_export(1, '/tmp/x');", 1, "SELECT"),
            (
                "ALTER ROLE app SET session_preload_libraries = '/tmp/evil';",
                1,
                "libraries",
            ),
            ("ALTER ROLE app RENAME TO b;", 1, "unexpected"),
            (
                "CREATE ROLE a WITH LOGIN PASSWORD 'x' IN ROLE pg_execute_server_program;",
                1,
                "unexpected",
            ),
            (
                "GRANT ALL ON DATABASE app TO a;",
                1,
                "other than a tablespace",
            ),
            ("GRANT a TO b; SELECT 1;", 1, "SELECT"),
            ("GRANT a TO b GRANTED BY c, (SELECT 1);", 1, "unexpected"),
            ("COMMENT ON TABLE t IS 'x';", 1, "other than a role"),
            ("COMMENT ON ROLE a IS 'x' || (SELECT 1);", 1, "unexpected"),
            (
                "CREATE TABLESPACE t LOCATION '/x' ; CHECKPOINT;",
                1,
                "CHECKPOINT",
            ),
            ("CREATE ROLE a::text;", 1, "unexpected character"),
            ("CREATE ROLE 1a;", 1, "number followed"),
        ];
        for (script, line, want) in cases {
            let e = parse(script).unwrap_err();
            assert_eq!(e.line, line, "{script:?}: {e}");
            assert!(e.why.contains(want), "{script:?}: {e}");
        }
    }
}
