//! The account routes: `DELETE /v1/me` (erase the account, with the password) and
//! `GET /v1/me/export` (a zip of the user's data). The work is in `account.rs`.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode};
use hyper::body::Incoming;

use nova_core::shard_of;
use nova_protocol::{self as wire, Route};

use crate::account::AccountOp;
use crate::api::{authenticate, json_body, Reply, Result};
use crate::error::ApiError;
use crate::mesh::Op;
use crate::shard::Shard;

/// Longest password looked at; a longer one cannot be the account's.
const PASSWORD_BYTES_MAX: usize = 1024;

pub(crate) async fn dispatch(
    shard: &Rc<Shard>,
    route: Route,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    let claims = authenticate(shard, req.headers())?;
    let user_id = claims.user_id;
    let home = shard_of(user_id);
    match route {
        Route::DeleteAccount => {
            let body: wire::DeleteAccountRequest = json_body(shard, req).await?;
            if body.password.is_empty() || body.password.len() > PASSWORD_BYTES_MAX {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "wrong_password",
                    "the password is not the account's password",
                ));
            }
            let ip = peer.to_string();
            shard
                .ask(home, deadline, |reply| {
                    Op::Account(AccountOp::Delete {
                        user_id,
                        password: body.password,
                        ip,
                        reply,
                    })
                })
                .await?;
            Ok(Reply::empty(StatusCode::NO_CONTENT))
        }
        Route::ExportAccount => {
            shard
                .ask(home, deadline, |reply| {
                    Op::Account(AccountOp::ExportBegin { user_id, reply })
                })
                .await?;
            let chunks = crate::account::start_export(shard, user_id);
            let name = format!("attachment; filename=\"nova-export-{user_id}.zip\"");
            let mut reply = Reply::streamed(StatusCode::OK, "application/zip", chunks);
            if let Ok(v) = HeaderValue::from_str(&name) {
                reply = reply.header(HeaderName::from_static("content-disposition"), v);
            }
            Ok(reply)
        }
        _ => Err(ApiError::not_found()),
    }
}
