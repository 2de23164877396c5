//! Domain types of the anchor service: request status codes, stream ids, request CIDs,
//! client timestamps, and the parsers for the two request body forms (JSON and CAR).
//!
//! Everything here is pure: no IO besides reading an in-memory CAR.

pub mod fault;
pub mod pipeline;
pub mod request;
pub mod status;
pub mod stream_id;
pub mod time;

pub use cid::Cid;
pub use request::{
    AnchorRequest, MAX_ID_TEXT_LEN, RequestError, car_root, parse_car_request, parse_cid,
    parse_json_request,
};
pub use status::RequestStatus;
pub use stream_id::{StreamId, StreamIdError};
pub use time::{ClientTimestamp, TimestampError};
