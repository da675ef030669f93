//! Bounds on what a peer's message may make us hold in memory.

/// Largest gRPC message any Damselfly server accepts or client sends and receives. The
/// biggest real messages are piece lists of very large tasks (a 64 GiB task in 4 MiB pieces
/// is 16,384 pieces of about 100 bytes: under 2 MiB); anything far past that is an attack or
/// a bug, and must fail instead of being buffered.
pub const MAX_GRPC_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
