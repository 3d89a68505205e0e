//! Simple queries on a server connection outside any client's view, returning rows as
//! text (for the lag monitor and the function catalog).

use bytes::{Buf, Bytes, BytesMut};

use super::ServerConn;
use crate::error::Error;
use crate::protocol::backend::{parse_parameter_status, tag, TxStatus};
use crate::protocol::error_response::parse_error_fields;
use crate::protocol::frame::{complete_frame, HEADER_LEN};
use crate::protocol::frontend;
use crate::protocol::io::{read_some, write_all};

/// Rows of text values (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// Runs `sql` as a simple query, passing each DataRow body to `on_row`; ParameterStatus
/// reports and the transaction status are recorded on `conn`. Returns the server's
/// ErrorResponse frame if it failed; transport failures are `Err`.
pub async fn run_simple(
    conn: &mut ServerConn,
    sql: &str,
    max: usize,
    mut on_row: impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<Option<Bytes>, Error> {
    let mut out = BytesMut::new();
    frontend::write_query(&mut out, sql);
    write_all(&conn.stream, &out)
        .await
        .map_err(Error::ServerLost)?;
    let mut err = None;
    loop {
        while let Some(h) =
            complete_frame(&conn.rbuf, max).map_err(|e| Error::ServerProtocol(e.to_string()))?
        {
            let frame = conn.rbuf.split_to(h.total).freeze();
            let body = &frame[HEADER_LEN..];
            match h.tag {
                tag::DATA_ROW => on_row(body)?,
                tag::PARAMETER_STATUS => {
                    if let Some((n, v)) = parse_parameter_status(body) {
                        conn.set_reported(n, v);
                    }
                }
                tag::ERROR_RESPONSE => err = Some(frame),
                tag::READY_FOR_QUERY => {
                    conn.status = body
                        .first()
                        .and_then(|&b| TxStatus::from_byte(b))
                        .unwrap_or_default();
                    return Ok(err);
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

/// Runs `sql` and returns its rows, or the server's error message as `Ok(Err(..))`.
/// Transport failures are `Err`.
pub async fn simple_rows(
    conn: &mut ServerConn,
    sql: &str,
    max: usize,
) -> Result<Result<Rows, String>, Error> {
    let mut rows = Vec::new();
    let err = run_simple(conn, sql, max, |body| {
        rows.push(data_row(body)?);
        Ok(())
    })
    .await?;
    Ok(match err {
        Some(frame) => Err(parse_error_fields(&frame[HEADER_LEN..]).message),
        None => Ok(rows),
    })
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
