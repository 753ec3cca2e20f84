//! Request parameters as `(member, value)` pairs, from URI labels, the query string, headers,
//! a form body or the top level of a JSON body. Only what resource extraction needs: strings,
//! lists of strings and the keys of top-level maps (e.g. DynamoDB `RequestItems`).

use std::borrow::Cow;

/// Bodies beyond this are not scanned for parameters (the classifier only needs the top level,
/// and captured bodies may be partial anyway).
const MAX_SCAN: usize = 256 * 1024;
/// Cap on collected pairs, so a hostile body cannot make the agent allocate without bound.
pub const MAX_PARAMS: usize = 256;

#[derive(Debug, Default)]
pub struct Params<'a> {
    pub items: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Params<'a> {
    pub fn push(&mut self, k: impl Into<Cow<'a, str>>, v: impl Into<Cow<'a, str>>) {
        if self.items.len() < MAX_PARAMS {
            self.items.push((k.into(), v.into()));
        }
    }

    pub fn first(&self, member: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|(k, _)| k == member)
            .map(|(_, v)| v.as_ref())
    }

    pub fn all<'s>(&'s self, member: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.items
            .iter()
            .filter(move |(k, _)| k == member)
            .map(|(_, v)| v.as_ref())
    }
}

/// Decodes `%XX` (and `+` when `form`); borrows when there is nothing to decode.
pub fn decode(s: &str, form: bool) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || (form && b == b'+')) {
        return Cow::Borrowed(s);
    }
    if form {
        return Cow::Owned(crate::sigv4::percent_decode(s));
    }
    // Path labels: `+` is literal.
    let b = s.as_bytes();
    let hex = |c: Option<&u8>| c.and_then(|&c| (c as char).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%'
            && let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(c);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Raw `k=v` pairs of a query string or form body (not decoded).
pub fn pairs(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// `InstanceId.1` -> `InstanceId`, `Names.member.2` -> `Names`; other dotted keys unchanged.
pub fn form_member(key: &str) -> &str {
    let Some((head, last)) = key.rsplit_once('.') else {
        return key;
    };
    if !last.bytes().all(|b| b.is_ascii_digit()) {
        return key;
    }
    let head = head.strip_suffix(".member").unwrap_or(head);
    if head.contains('.') { key } else { head }
}

/// Adds the top-level members of a JSON object body.
pub fn scan_json<'a>(body: &'a [u8], out: &mut Params<'a>) {
    let body = &body[..body.len().min(MAX_SCAN)];
    let mut p = Json { b: body, i: 0 };
    p.ws();
    if !p.eat(b'{') {
        return;
    }
    loop {
        p.ws();
        if p.peek() != Some(b'"') {
            return;
        }
        let Some(key) = p.string() else { return };
        p.ws();
        if !p.eat(b':') {
            return;
        }
        p.ws();
        match p.peek() {
            Some(b'"') => {
                let Some(v) = p.string() else { return };
                out.push(key, v);
            }
            Some(b'[') => {
                p.i += 1;
                loop {
                    p.ws();
                    match p.peek() {
                        Some(b']') => {
                            p.i += 1;
                            break;
                        }
                        Some(b'"') => {
                            let Some(v) = p.string() else { return };
                            out.push(key.clone(), v);
                        }
                        Some(_) => {
                            let at = p.i;
                            // No progress means a stray closer: malformed, stop.
                            if !p.skip_value() || p.i == at {
                                return;
                            }
                        }
                        None => return,
                    }
                    p.ws();
                    p.eat(b',');
                }
            }
            Some(b'{') => {
                // Keys of a top-level map name resources (DynamoDB RequestItems).
                p.i += 1;
                loop {
                    p.ws();
                    match p.peek() {
                        Some(b'}') => {
                            p.i += 1;
                            break;
                        }
                        Some(b'"') => {
                            let Some(k) = p.string() else { return };
                            out.push(key.clone(), k);
                            p.ws();
                            if !p.eat(b':') {
                                return;
                            }
                            p.ws();
                            if !p.skip_value() {
                                return;
                            }
                        }
                        _ => return,
                    }
                    p.ws();
                    p.eat(b',');
                }
            }
            Some(_) => {
                if !p.skip_value() {
                    return;
                }
            }
            None => return,
        }
        p.ws();
        if !p.eat(b',') {
            return;
        }
    }
}

struct Json<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Json<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string at the cursor; None if unterminated or not UTF-8.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            match self.b.get(self.i)? {
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                b'"' => break,
                _ => self.i += 1,
            }
        }
        self.i += 1;
        let raw = self.b.get(start..self.i)?;
        if escaped {
            serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
        } else {
            std::str::from_utf8(raw.get(1..raw.len() - 1)?)
                .ok()
                .map(Cow::Borrowed)
        }
    }

    fn skip_string(&mut self) -> bool {
        self.i += 1;
        loop {
            match self.b.get(self.i) {
                None => return false,
                Some(b'\\') => self.i += 2,
                Some(b'"') => {
                    self.i += 1;
                    return true;
                }
                Some(_) => self.i += 1,
            }
        }
    }

    /// Skips one value (containers by depth count), leaving the cursor on the `,` or closing
    /// bracket that follows; false at truncation.
    fn skip_value(&mut self) -> bool {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                None => return false,
                Some(b'"') => {
                    if !self.skip_string() {
                        return false;
                    }
                    if depth == 0 {
                        return true;
                    }
                }
                Some(b'{' | b'[') => {
                    depth += 1;
                    self.i += 1;
                }
                Some(b'}' | b']') => {
                    if depth == 0 {
                        return true;
                    }
                    depth -= 1;
                    self.i += 1;
                    if depth == 0 {
                        return true;
                    }
                }
                Some(b',') if depth == 0 => return true,
                Some(_) => self.i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_top_level() {
        let mut p = Params::default();
        scan_json(
            br#" {"TableName":"t\"1","Limit":5,"Key":{"id":{"S":"x"}},"Names":["a","b",3],"RequestItems":{"t2":[{}],"t3":{}},"Nested":{"a":[1,{"b":"]"}]},"Last":"z"}"#,
            &mut p,
        );
        assert_eq!(p.first("TableName"), Some("t\"1"));
        assert_eq!(p.all("Names").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(p.all("RequestItems").collect::<Vec<_>>(), ["t2", "t3"]);
        assert_eq!(p.all("Key").collect::<Vec<_>>(), ["id"]);
        assert_eq!(p.first("Last"), Some("z"));
    }

    #[test]
    fn json_garbage_is_harmless() {
        for b in [
            &b"{"[..],
            b"{\"a",
            b"{\"a\":",
            b"{\"a\":[",
            b"{\"a\":{\"b\"",
            b"{\"a\":\"\\",
            b"\xff\xfe",
            b"[1,2]",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":1,,}",
            // A stray closer inside an array once looped forever.
            b"{\"a\":[}",
            b"{\"a\":[1,}]}",
        ] {
            let mut p = Params::default();
            scan_json(b, &mut p);
        }
    }

    #[test]
    fn form_keys() {
        assert_eq!(form_member("InstanceId.1"), "InstanceId");
        assert_eq!(form_member("Names.member.12"), "Names");
        assert_eq!(form_member("Filter.1.Name"), "Filter.1.Name");
        assert_eq!(form_member("Action"), "Action");
        assert_eq!(decode("a%2Fb+c", false), "a/b+c");
        assert_eq!(decode("a%2Fb+c", true), "a/b c");
        assert_eq!(decode("%zz%4", false), "%zz%4");
    }
}
