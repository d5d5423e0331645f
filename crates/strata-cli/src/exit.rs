//! Exit statuses, defined once: what `main` returns, what the signal handler exits with, and
//! what `--help` and the README document.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | strata failed (one `strata: error: …` line says why) |
//! | 2 | the command line is wrong (clap's own) |
//! | 125 | `strata run`: strata or the engine failed before the container ran (Docker's and podman's convention) |
//! | any | `strata run`: the container's own status (128 + N when signal N ended it) |
//! | 130, 143 | interrupted by SIGINT or SIGTERM (128 + the signal), unfinished files removed |
//! | 141 | standard output's reader went away (`strata inspect … \| head`): quietly, as a process killed by SIGPIPE |

use std::process::ExitCode;

/// The help text's summary of [`Status`] (a macro, for `concat!` in clap's attributes).
macro_rules! exit_codes_help {
    () => {
        "Exit codes: 0 success, 1 failure, 2 usage error, 130/143 interrupted (SIGINT/SIGTERM), 141 standard output's reader went away; `strata run`: the container's status, or 125 when strata itself failed."
    };
}
pub(crate) use exit_codes_help;

/// How strata ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    Failure,
    /// `strata run` failed before the container ran.
    RunFailure,
    /// A container's own status.
    Container(u8),
    /// Ended by signal N (as a shell reports it: 128 + N).
    Signal(i32),
}

impl Status {
    /// The status of `strata run` for a container engine that exited with `status`.
    pub fn of_container(status: std::process::ExitStatus) -> Status {
        match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
            (Some(code), _) => u8::try_from(code).map_or(Status::RunFailure, Status::Container),
            (None, Some(signal)) => Status::Signal(signal),
            (None, None) => Status::RunFailure,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Status::Success => 0,
            Status::Failure => 1,
            Status::RunFailure => 125,
            Status::Container(code) => code,
            Status::Signal(signal) => u8::try_from(128 + signal).unwrap_or(125),
        }
    }
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> ExitCode {
        ExitCode::from(status.code())
    }
}
