//! Keeping one field of a response's rows for the cache ([`RequestSession::capture`]): the
//! `RowDescription` says which field comes from the asked-for column, each `DataRow` gives its
//! value. Anything unexpected (a second description, a row before one, a row too large to hold,
//! too many rows, a malformed message) gives up: the cache then knows nothing, which is safe.
//!
//! [`RequestSession::capture`]: crate::seam::RequestSession::capture

use bytes::Bytes;

use crate::protocol::Reader;
use crate::seam::{Capture, Captured, ColumnOrigin, Format, MAX_CAPTURED_ROWS};

/// A capture in progress for one request.
#[derive(Debug)]
pub(super) struct Capturing {
    origins: Vec<ColumnOrigin>,
    /// The result formats the request asked for (a Bind's codes; none for a simple Query, whose
    /// results are text). A `RowDescription` answering a statement's Describe says text
    /// whatever the Bind asks, so its own format codes are never trusted.
    formats: Vec<Format>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// No `RowDescription` yet.
    Waiting,
    /// Described: the field's position, and what is kept so far.
    Keeping { position: usize, captured: Captured },
    /// Given up.
    Failed,
}

impl Capturing {
    pub(super) fn new(capture: Capture, formats: &[Format]) -> Self {
        Self { origins: capture.origins, formats: formats.to_vec(), state: State::Waiting }
    }

    /// Gives up (a second statement, a message streamed through in pieces).
    pub(super) fn fail(&mut self) {
        self.state = State::Failed;
    }

    /// A `RowDescription` body.
    pub(super) fn described(&mut self, body: &[u8]) {
        self.state = match (&self.state, self.field(body)) {
            (State::Waiting, Some((position, origin, type_oid, format))) => State::Keeping {
                position,
                captured: Captured { origin, type_oid, format, values: Vec::new() },
            },
            _ => State::Failed,
        };
    }

    fn field(&self, body: &[u8]) -> Option<(usize, ColumnOrigin, u32, Format)> {
        let mut r = Reader::new(body, "RowDescription");
        let count = usize::try_from(r.i16().ok()?).ok()?;
        for position in 0..count {
            r.cbytes().ok()?;
            let origin = ColumnOrigin { table_oid: r.u32().ok()?, column: r.i16().ok()? };
            let type_oid = r.u32().ok()?;
            r.take(8).ok()?;
            if self.origins.contains(&origin) {
                let format = match self.formats.as_slice() {
                    [] => Format::Text,
                    [one] => *one,
                    many => *many.get(position)?,
                };
                return Some((position, origin, type_oid, format));
            }
        }
        None
    }

    /// A `DataRow` body.
    pub(super) fn row(&mut self, body: &[u8]) {
        let State::Keeping { position, captured } = &mut self.state else {
            self.state = State::Failed;
            return;
        };
        match value_at(body, *position) {
            Some(value) if captured.values.len() < MAX_CAPTURED_ROWS => captured.values.push(value),
            _ => self.state = State::Failed,
        }
    }

    /// What was kept, unless the capture gave up or saw no description.
    pub(super) fn finish(self) -> Option<Captured> {
        match self.state {
            State::Keeping { captured, .. } => Some(captured),
            State::Waiting | State::Failed => None,
        }
    }
}

/// The value of column `position` of a `DataRow` body (`Some(None)` for NULL).
fn value_at(body: &[u8], position: usize) -> Option<Option<Bytes>> {
    let mut r = Reader::new(body, "DataRow");
    let count = usize::try_from(r.i16().ok()?).ok()?;
    if position >= count {
        return None;
    }
    for i in 0..=position {
        let len = r.i32().ok()?;
        let value = if len < 0 { None } else { Some(r.take(usize::try_from(len).ok()?).ok()?) };
        if i == position {
            return Some(value.map(Bytes::copy_from_slice));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description(fields: &[(&str, u32, i16, u32, i16)]) -> Vec<u8> {
        let mut b = (fields.len() as i16).to_be_bytes().to_vec();
        for (name, table, column, ty, format) in fields {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&table.to_be_bytes());
            b.extend_from_slice(&column.to_be_bytes());
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&[0, 4, 0xff, 0xff, 0xff, 0xff]);
            b.extend_from_slice(&format.to_be_bytes());
        }
        b
    }

    fn row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    fn capturing() -> Capturing {
        Capturing::new(Capture { origins: vec![ColumnOrigin { table_oid: 16384, column: 1 }] }, &[])
    }

    #[test]
    fn the_format_is_the_one_the_bind_asked_for() {
        let origins = vec![ColumnOrigin { table_oid: 16384, column: 1 }];
        // A description of the statement says text (0); the Bind asked binary for the second column.
        let described = description(&[("v", 16384, 2, 23, 0), ("id", 16384, 1, 23, 0)]);
        for (formats, want) in [
            (vec![], Format::Text),
            (vec![Format::Binary], Format::Binary),
            (vec![Format::Text, Format::Binary], Format::Binary),
        ] {
            let mut c = Capturing::new(Capture { origins: origins.clone() }, &formats);
            c.described(&described);
            c.row(&row(&[Some("x"), Some("y")]));
            assert_eq!(c.finish().map(|k| k.format()), Some(want), "{formats:?}");
        }
        // Codes for another number of columns: the server refuses such a Bind; nothing kept.
        let mut c = Capturing::new(Capture { origins }, &[Format::Text, Format::Text, Format::Binary]);
        c.described(&description(&[("id", 16384, 1, 23, 0)]));
        assert!(c.finish().is_some_and(|k| k.format() == Format::Text));
    }

    #[test]
    fn keeps_the_field_that_comes_from_the_column_not_one_that_is_named_like_it() {
        let mut c = capturing();
        // `RETURNING v AS id, id AS k`: the field named id comes from column 2.
        c.described(&description(&[("id", 16384, 2, 23, 0), ("k", 16384, 1, 23, 0)]));
        c.row(&row(&[Some("10"), Some("1")]));
        c.row(&row(&[None, Some("2")]));
        let kept = c.finish().unwrap_or_else(|| panic!("kept"));
        assert_eq!(kept.values(), &[Some(Bytes::from("1")), Some(Bytes::from("2"))]);
        assert_eq!(kept.origin(), ColumnOrigin { table_oid: 16384, column: 1 });
    }

    #[test]
    fn gives_up_on_anything_unexpected() {
        // No field from the column (an expression).
        let mut c = capturing();
        c.described(&description(&[("id", 0, 0, 23, 0)]));
        assert!(c.finish().is_none());
        // A row before a description (Execute without Describe).
        let mut c = capturing();
        c.row(&row(&[Some("1")]));
        c.described(&description(&[("id", 16384, 1, 23, 0)]));
        assert!(c.finish().is_none());
        // Two descriptions.
        let mut c = capturing();
        c.described(&description(&[("id", 16384, 1, 23, 0)]));
        c.described(&description(&[("id", 16384, 1, 23, 0)]));
        assert!(c.finish().is_none());
        // Too many rows, a short row, a malformed one.
        let mut c = capturing();
        c.described(&description(&[("id", 16384, 1, 23, 0)]));
        for i in 0..=MAX_CAPTURED_ROWS {
            c.row(&row(&[Some(&i.to_string())]));
        }
        assert!(c.finish().is_none());
        let mut c = capturing();
        c.described(&description(&[("x", 0, 0, 23, 0), ("id", 16384, 1, 23, 0)]));
        c.row(&row(&[Some("1")]));
        assert!(c.finish().is_none());
        let mut c = capturing();
        c.described(&description(&[("id", 16384, 1, 23, 0)]));
        c.row(&[0, 1, 0, 0, 0, 9, b'1']);
        assert!(c.finish().is_none());
        // Nothing described at all: nothing known.
        assert!(capturing().finish().is_none());
    }
}
