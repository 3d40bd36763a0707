//! Shell words: splitting a string as `env -S` and `sh -c` see it, quoting words for the
//! operator, and the shell function that routes `docker` through the guard.

/// Split a string into words as `env -S` does: blanks separate words, `'...'` is literal,
/// `"..."` allows `\"`, `\\`, `\$`; outside quotes `\` escapes the next character, `\_` is
/// a blank inside a word; `${NAME}` expands; `#` starts a comment, `\c` ends the string.
pub(super) fn split_env_string(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some('\\') if matches!(chars.peek(), Some('\'' | '\\')) => {
                            cur.push(chars.next().expect("peeked"))
                        }
                        Some(c) => cur.push(c),
                        None => return Err("an unterminated quote in a split string".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('_') => cur.push(' '),
                            Some(c @ ('"' | '\\' | '$' | '#' | ' ')) => cur.push(c),
                            Some('c') => return Err("\\c inside quotes".into()),
                            Some(c) => cur.push(escape(c)?),
                            None => return Err("an unterminated quote in a split string".into()),
                        },
                        Some('$') => cur.push_str(&expand(&mut chars, env)?),
                        Some(c) => cur.push(c),
                        None => return Err("an unterminated quote in a split string".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('_') => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                Some('c') => break,
                Some(c @ ('"' | '\'' | '\\' | '$' | '#' | ' ')) => {
                    in_word = true;
                    cur.push(c)
                }
                Some(c) => {
                    in_word = true;
                    cur.push(escape(c)?)
                }
                None => return Err("a split string ends with a backslash".into()),
            },
            '$' => {
                in_word = true;
                cur.push_str(&expand(&mut chars, env)?);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn escape(c: char) -> std::result::Result<char, String> {
    Ok(match c {
        'f' => '\x0c',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'v' => '\x0b',
        other => return Err(format!("the escape \\{other} in a split string")),
    })
}

fn expand(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<String, String> {
    if chars.next() != Some('{') {
        return Err("a `$` not followed by {NAME} in a split string".into());
    }
    let mut name = String::new();
    for c in chars.by_ref() {
        if c == '}' {
            return Ok(env(&name).unwrap_or_default());
        }
        if !(c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("${{{name}{c}...}} in a split string"));
        }
        name.push(c);
    }
    Err("an unterminated ${ in a split string".into())
}

/// Words for a message, quoted where a shell would need it.
/// Words for a message or a command to paste, each quoted where a shell would need it.
pub(super) fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A shell function for bash and zsh that sends `docker` and `docker-compose` through the
/// guard (`drkit guard --install`). `drkit` is the path of the drkit binary.
pub fn shell_function(drkit: &str) -> String {
    let q = shell_quote(drkit);
    format!(
        r#"# drkit guard: refuse `docker compose down -v`, `docker volume rm`, `prune` ... when the
# volumes they destroy have no fresh, verified backup. Add to ~/.bashrc or ~/.zshrc:
#   eval "$({q} guard --install)"
# Bypass once with: command docker ...
docker() {{ {q} guard -- docker "$@"; }}
docker-compose() {{ {q} guard -- docker-compose "$@"; }}
"#
    )
}

/// One word as a POSIX shell reads it back: as is when it holds only characters no shell
/// treats specially, else in single quotes.
pub(super) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
