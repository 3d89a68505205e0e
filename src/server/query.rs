//! Simple queries on a server connection outside any client's view, returning rows as
//! text (for the lag monitor and the function catalog).

use bytes::{Buf, BytesMut};

use super::ServerConn;
use crate::error::Error;
use crate::protocol::backend::tag;
use crate::protocol::error_response::parse_error_fields;
use crate::protocol::frame::{complete_frame, HEADER_LEN};
use crate::protocol::frontend;
use crate::protocol::io::{read_some, write_all};

/// Rows of text values (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// Runs `sql` and returns its rows, or the server's error message as `Ok(Err(..))`.
/// Transport failures are `Err`.
pub async fn simple_rows(
    conn: &mut ServerConn,
    sql: &str,
    max: usize,
) -> Result<Result<Rows, String>, Error> {
    let mut out = BytesMut::new();
    frontend::write_query(&mut out, sql);
    write_all(&conn.stream, &out)
        .await
        .map_err(Error::ServerLost)?;
    let mut rows = Vec::new();
    let mut err = None;
    loop {
        while let Some(h) =
            complete_frame(&conn.rbuf, max).map_err(|e| Error::ServerProtocol(e.to_string()))?
        {
            let frame = conn.rbuf.split_to(h.total);
            let body = &frame[HEADER_LEN..];
            match h.tag {
                tag::DATA_ROW => rows.push(data_row(body)?),
                tag::ERROR_RESPONSE => err = Some(parse_error_fields(body).message),
                tag::READY_FOR_QUERY => {
                    return Ok(match err {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    })
                }
                _ => {}
            }
        }
        if read_some(&conn.stream, &mut conn.rbuf)
            .await
            .map_err(Error::ServerLost)?
            == 0
        {
            return Err(Error::ServerLost(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

fn data_row(mut body: &[u8]) -> Result<Vec<Option<String>>, Error> {
    let bad = || Error::ServerProtocol("malformed DataRow".into());
    if body.len() < 2 {
        return Err(bad());
    }
    let n = body.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if body.len() < 4 {
            return Err(bad());
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err(bad());
        }
        row.push(Some(String::from_utf8_lossy(&body[..len]).into_owned()));
        body.advance(len);
    }
    Ok(row)
}
