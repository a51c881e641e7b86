//! The body of the `api_multipart` fuzz target ([`crate::fuzzing`]): a child of the
//! submission handler, so the form reader stays private to it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

use super::{open_form, read_form, FormSink, Metadata};
use crate::api::ApiError;

/// A request body that hands out its chunks one by one.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// Takes every payload part in, keeping only its length.
struct Counting;

impl FormSink for Counting {
    type Stored = u64;

    async fn check_id(&mut self, _id: &str) -> Result<(), ApiError> {
        Ok(())
    }

    async fn payload(
        &mut self,
        field: &mut multer::Field<'static>,
        _metadata: &Metadata,
        _mime_type: &str,
    ) -> Result<u64, ApiError> {
        let mut n = 0;
        while let Some(chunk) = field.chunk().await.map_err(ApiError::internal)? {
            n += chunk.len() as u64;
        }
        Ok(n)
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// The backend API's `multipart/form-data` reader of `POST /api/v1/messages` (the
/// metadata part and its checks, then the file parts): `data` is the request's
/// `Content-Type` value, a line feed, then the body, which arrives in pieces whose size is
/// chosen from the input's length. A form that was read names every part it carries.
pub fn api_multipart(data: &[u8]) {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(content_type) = std::str::from_utf8(head) else {
        return;
    };
    let Ok(boundary) = multer::parse_boundary(content_type.trim_end_matches('\r')) else {
        return;
    };
    const STEPS: [usize; 5] = [1, 3, 64, 4096, usize::MAX];
    let step = STEPS[data.len() % STEPS.len()];
    let chunks = body
        .chunks(step.min(body.len().max(1)))
        .map(Bytes::copy_from_slice)
        .collect();
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut form = open_form(Chunks(chunks), boundary, 1 << 20);
            let mut parts = Vec::new();
            let Ok(metadata) = read_form(&mut form, &mut Counting, &mut parts).await else {
                return;
            };
            assert_eq!(parts.len(), metadata.payloads.len(), "one part per payload");
            for p in &metadata.payloads {
                assert!(parts.iter().any(|(name, _, _)| *name == p.part));
            }
        })
    });
}
