//! dfinit: points container runtimes at dfdaemon's registry mirror. All logic lives in
//! `damselfly_dfinit`.

fn main() -> std::process::ExitCode {
    damselfly_dfinit::main()
}
