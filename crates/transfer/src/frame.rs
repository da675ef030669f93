//! Vortex frames as the piece server and client read them, as pure functions over bytes: the
//! sockets in `vortex` read a header, ask here how long the value is, read that many bytes
//! and decode them here. Kept apart from the I/O so the fuzz targets (`fuzz/`) run exactly
//! the checks a hostile peer meets.

use crate::error::TransferError;
use damselfly_core::{PieceSpan, RelayPath};
use std::net::SocketAddr;
use vortex_protocol::tlv::download_piece::DownloadPiece;
use vortex_protocol::tlv::error::{Code, Error as ErrorFrame};
use vortex_protocol::tlv::piece_content::PieceContent;
use vortex_protocol::tlv::piece_metadata::PieceMetadata as WireMetadata;
use vortex_protocol::tlv::{Tag, PIECE_NUMBER_SIZE, TASK_ID_SIZE};
use vortex_protocol::{Header, Message, HEADER_SIZE};

/// Largest PieceContent/Error value a client accepts; real ones are ~200 bytes, so anything
/// bigger is garbage that must not make us allocate.
pub const MAX_FRAME_VALUE_LENGTH: u32 = 64 * 1024;
/// The value of a DownloadPiece request: a task ID and a piece number, nothing else.
pub(crate) const REQUEST_LENGTH: usize = TASK_ID_SIZE + PIECE_NUMBER_SIZE;

/// Damselfly's cut-through request (DESIGN.md "Cut-through forwarding"), on a tag Vortex
/// reserves: the value of a DownloadPiece, for a piece the parent may still be receiving. Sent
/// only to parents that offered cut-through in their SyncPieces answer, so official peers
/// never see it.
pub const CUT_THROUGH_REQUEST_TAG: u8 = 200;
/// The answer to a cut-through request for a piece still arriving: a PieceContent value with
/// an empty digest, then the piece's raw bytes as they arrive, then a trailer: a PieceContent
/// frame of the recorded piece (its `crc32:` digest) or an Error frame if the parent's own
/// copy failed its check. A piece already recorded is answered as DownloadPiece is.
pub const ARRIVING_CONTENT_TAG: u8 = 201;

/// What a piece request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Vortex's DownloadPiece: a recorded piece, or NotFound.
    Recorded,
    /// Damselfly's cut-through: a recorded piece, or one still arriving, forwarded as it comes.
    CutThrough,
}

/// A piece request as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceRequest {
    pub piece: DownloadPiece,
    pub kind: RequestKind,
}

impl PieceRequest {
    /// The request as it goes on the wire, header included.
    pub fn encode_packet(&self, buffer: &mut impl bytes::BufMut) {
        match self.kind {
            RequestKind::Recorded => self.piece.encode_packet(buffer),
            RequestKind::CutThrough => {
                let tag = Tag::Reserved(CUT_THROUGH_REQUEST_TAG);
                Header::new(tag, REQUEST_LENGTH as u32).encode(buffer);
                self.piece.encode(buffer);
            }
        }
    }
}

/// The first frame of a parent's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A recorded piece; its bytes follow, checked by its digest.
    Recorded(WireMetadata),
    /// A piece still arriving at the parent, through the stores on this relay path (the
    /// parent's the last); its bytes follow, then a trailer.
    Arriving(RelayPath),
}

/// A request the server answers with an Error frame (code and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub Code, pub String);

fn invalid(message: String) -> BadRequest {
    BadRequest(Code::InvalidArgument, message)
}

/// Server side: checks a request header and returns the request's kind and the value length
/// to read (always [`REQUEST_LENGTH`]); anything but a DownloadPiece or cut-through request of
/// that size is refused unread.
pub(crate) fn request_value_length(
    header: &[u8; HEADER_SIZE],
) -> Result<(RequestKind, usize), BadRequest> {
    let header = Header::decode(header).map_err(|e| invalid(e.to_string()))?;
    let kind = match header.tag() {
        Tag::DownloadPiece => RequestKind::Recorded,
        Tag::Reserved(CUT_THROUGH_REQUEST_TAG) => RequestKind::CutThrough,
        other => {
            return Err(invalid(format!(
                "expected a DownloadPiece request, got tag {}",
                u8::from(other)
            )))
        }
    };
    if header.length() as usize != REQUEST_LENGTH {
        return Err(invalid(format!(
            "DownloadPiece value must be {REQUEST_LENGTH} bytes, got {}",
            header.length()
        )));
    }
    Ok((kind, REQUEST_LENGTH))
}

pub(crate) fn decode_request_value(value: &[u8]) -> Result<DownloadPiece, BadRequest> {
    DownloadPiece::decode(value).map_err(|e| invalid(e.to_string()))
}

/// Server side, whole frame: the request a peer's first bytes make. Bytes after the request
/// are never read. Entry point of the `vortex_request` fuzz target.
#[doc(hidden)]
pub fn decode_request_frame(frame: &[u8]) -> Result<PieceRequest, BadRequest> {
    let short = || invalid(format!("connection closed after {} bytes", frame.len()));
    let header = frame.first_chunk::<HEADER_SIZE>().ok_or_else(short)?;
    let (kind, length) = request_value_length(header)?;
    let value = frame
        .get(HEADER_SIZE..HEADER_SIZE + length)
        .ok_or_else(short)?;
    let piece = decode_request_value(value)?;
    Ok(PieceRequest { piece, kind })
}

/// Client side: the tag and value length of a parent's answer header, refusing a length
/// that would make us allocate more than [`MAX_FRAME_VALUE_LENGTH`].
pub(crate) fn answer_value_length(
    header: &[u8; HEADER_SIZE],
    addr: SocketAddr,
) -> Result<(Tag, usize), TransferError> {
    let header = Header::decode(header).map_err(|e| TransferError::Protocol(e.to_string()))?;
    if header.length() > MAX_FRAME_VALUE_LENGTH {
        return Err(TransferError::Protocol(format!(
            "parent {addr} sent a {} byte frame value",
            header.length()
        )));
    }
    Ok((header.tag(), header.length() as usize))
}

/// Client side: the piece metadata of a parent's answer, which must match the requested
/// span; an Error frame becomes the matching error.
pub(crate) fn decode_answer_value(
    tag: Tag,
    value: &[u8],
    addr: SocketAddr,
    task_id: &str,
    span: PieceSpan,
) -> Result<WireMetadata, TransferError> {
    match decode_any_answer(tag, value, addr, task_id, span)? {
        Answer::Recorded(metadata) => Ok(metadata),
        Answer::Arriving(_) => Err(TransferError::Protocol(format!(
            "parent {addr} answered a DownloadPiece with a cut-through frame"
        ))),
    }
}

/// Client side: a parent's answer to a cut-through request (or to a DownloadPiece, which
/// never is `Arriving`), checked against the span asked for.
pub(crate) fn decode_any_answer(
    tag: Tag,
    value: &[u8],
    addr: SocketAddr,
    task_id: &str,
    span: PieceSpan,
) -> Result<Answer, TransferError> {
    let protocol = |e: vortex_protocol::error::Error| TransferError::Protocol(e.to_string());
    match tag {
        Tag::PieceContent => {
            let metadata = PieceContent::decode(value).map_err(protocol)?.metadata;
            check_answer_span(&metadata, addr, span).map(Answer::Recorded)
        }
        Tag::Reserved(ARRIVING_CONTENT_TAG) => {
            let metadata = PieceContent::decode(value).map_err(protocol)?.metadata;
            check_answer_span(&metadata, addr, span)?;
            // Damselfly's extension: the relay path travels in the frame's parent ID.
            RelayPath::from_wire(&metadata.parent_id)
                .map(Answer::Arriving)
                .map_err(|e| TransferError::Protocol(format!("parent {addr}: {e}")))
        }
        Tag::Error => {
            let error = ErrorFrame::decode(value).map_err(protocol)?;
            if error.code == Code::NotFound {
                return Err(TransferError::PieceNotFound {
                    task_id: task_id.to_string(),
                    number: span.number,
                });
            }
            Err(TransferError::PeerError {
                addr,
                code: error.code.into(),
                message: error.message,
            })
        }
        other => Err(TransferError::Protocol(format!(
            "parent {addr} answered with unexpected tag {}",
            u8::from(other)
        ))),
    }
}

fn check_answer_span(
    m: &WireMetadata,
    addr: SocketAddr,
    span: PieceSpan,
) -> Result<WireMetadata, TransferError> {
    if m.number != span.number || m.offset != span.offset || m.length != span.length {
        return Err(TransferError::Protocol(format!(
            "parent {addr} sent piece {} at {}+{}, asked for piece {} at {}+{}",
            m.number, m.offset, m.length, span.number, span.offset, span.length
        )));
    }
    Ok(m.clone())
}

/// Client side, whole frame: what a parent's answer to a request for `span` decodes to.
/// Entry point of the `vortex_answer` fuzz target.
#[doc(hidden)]
pub fn decode_answer_frame(
    frame: &[u8],
    task_id: &str,
    span: PieceSpan,
) -> Result<WireMetadata, TransferError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let short = || TransferError::Protocol(format!("answer ends after {} bytes", frame.len()));
    let header = frame.first_chunk::<HEADER_SIZE>().ok_or_else(short)?;
    let (tag, length) = answer_value_length(header, addr)?;
    let value = frame
        .get(HEADER_SIZE..HEADER_SIZE + length)
        .ok_or_else(short)?;
    decode_answer_value(tag, value, addr, task_id, span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn request_frames_decode_or_are_refused() {
        let mut frame = BytesMut::new();
        DownloadPiece::new("a".repeat(TASK_ID_SIZE), 7).encode_packet(&mut frame);
        let request = decode_request_frame(&frame).unwrap();
        assert_eq!(request.piece.piece_number, 7);
        assert_eq!(request.kind, RequestKind::Recorded);
        let mut cut = BytesMut::new();
        PieceRequest {
            piece: DownloadPiece::new("a".repeat(TASK_ID_SIZE), 9),
            kind: RequestKind::CutThrough,
        }
        .encode_packet(&mut cut);
        let request = decode_request_frame(&cut).unwrap();
        assert_eq!(
            (request.piece.piece_number, request.kind),
            (9, RequestKind::CutThrough)
        );
        let mut other = cut.clone();
        other[1] = CUT_THROUGH_REQUEST_TAG + 1;
        assert_eq!(
            decode_request_frame(&other).unwrap_err().0,
            Code::InvalidArgument
        );
        assert!(decode_request_frame(&frame[..frame.len() - 1]).is_err());
        let mut error = BytesMut::new();
        ErrorFrame::new(Code::Internal, "x".into()).encode_packet(&mut error);
        let refused = decode_request_frame(&error).unwrap_err();
        assert_eq!(refused.0, Code::InvalidArgument);
    }

    /// The one-byte piece 0 the answer tests ask for.
    const SPAN: PieceSpan = PieceSpan {
        number: 0,
        offset: 0,
        length: 1,
    };

    /// The value of a cut-through answer for [`SPAN`] with `parent_id` (the relay path).
    fn arriving_value(parent_id: String) -> BytesMut {
        let mut content = BytesMut::new();
        PieceContent {
            metadata: WireMetadata {
                number: SPAN.number,
                offset: SPAN.offset,
                length: SPAN.length,
                digest: String::new(),
                parent_id,
                traffic_type: 1,
                cost: std::time::Duration::ZERO,
                created_at: chrono::NaiveDateTime::default(),
            },
        }
        .encode(&mut content);
        content
    }

    #[test]
    fn garbage_cut_through_answers_are_protocol_errors() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let span = SPAN;
        let tag = Tag::Reserved(ARRIVING_CONTENT_TAG);
        for value in [&[][..], &[0xff; 7][..], &[0u8; 300][..]] {
            let error = decode_any_answer(tag, value, addr, "t", span).unwrap_err();
            assert!(matches!(error, TransferError::Protocol(_)), "{error}");
        }
        // An arriving piece is never a valid answer to a plain DownloadPiece.
        let content = arriving_value(String::new());
        assert!(decode_any_answer(tag, &content, addr, "t", span).is_ok());
        let error = decode_answer_value(tag, &content, addr, "t", span).unwrap_err();
        assert!(error.to_string().contains("cut-through"), "{error}");
    }

    #[test]
    fn a_cut_through_answer_s_relay_path_is_parsed_or_a_protocol_error() {
        let addr = SocketAddr::from(([127, 0, 0, 9], 4000));
        let tag = Tag::Reserved(ARRIVING_CONTENT_TAG);
        let answer =
            |parent_id: String| decode_any_answer(tag, &arriving_value(parent_id), addr, "t", SPAN);
        let store = damselfly_core::StoreId::random();
        let path = RelayPath::default().then(&store);
        assert_eq!(answer(path.to_wire()).unwrap(), Answer::Arriving(path));
        let too_long = vec![store.as_str(); 17].join(",");
        for garbage in [
            "peer-id".to_string(),
            "\u{0}".repeat(40),
            format!("{},", store.as_str()),
            too_long,
        ] {
            let error = answer(garbage.clone()).unwrap_err();
            assert!(
                matches!(&error, TransferError::Protocol(m) if m.contains("127.0.0.9:4000")),
                "{garbage:?}: {error}"
            );
        }
    }

    #[test]
    fn oversized_answers_are_refused_before_reading() {
        let frame = [0u8, u8::from(Tag::PieceContent), 0xff, 0xff, 0xff, 0xff];
        let span = PieceSpan {
            number: 0,
            offset: 0,
            length: 1,
        };
        let error = decode_answer_frame(&frame, "t", span).unwrap_err();
        assert!(error.to_string().contains("byte frame value"), "{error}");
    }
}
