//! The one error type of the scheduler library.

/// Everything that can stop the scheduler from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The configuration file could not be read or parsed, or sets a security key that is
    /// not implemented.
    #[error("scheduler config: {0}")]
    ConfigFile(#[from] damselfly_configfile::ConfigFileError),
    /// A configuration value is out of range.
    #[error("invalid scheduler config: {0}")]
    InvalidConfig(String),
    /// A TLS file could not be loaded, or a TLS section is only partly set.
    #[error("scheduler TLS: {0}")]
    Tls(#[from] damselfly_tls::TlsError),
    /// The gRPC server failed.
    #[error("scheduler gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A preheat request is malformed (bad URL, scope, count…).
    #[error("invalid preheat request: {0}")]
    InvalidPreheat(String),
    /// An image preheat could not resolve its manifest (registry unreachable, refused, no
    /// manifest for the platform).
    #[error("cannot resolve the image: {0}")]
    ImageResolve(String),
    /// No host matches a preheat's scope.
    #[error("no host to preheat on: {0}")]
    NoPreheatHost(String),
    /// The job store is full of running jobs.
    #[error("{0} preheat jobs are running; try again when one has finished")]
    TooManyJobs(usize),
}
