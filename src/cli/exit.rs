//! The exit codes of `syncback` (README "Exit codes"; also in `syncback --help`).
//! `2` is clap's usage error and is never used for anything else.

use std::process::ExitCode;

/// Done.
pub const OK: u8 = 0;
/// An error: invalid configuration, a service unreachable, a command that failed.
pub const FAILURE: u8 = 1;
/// A usage error (unknown flag, missing argument): clap's own code.
pub const USAGE: u8 = 2;
/// What was asked for does not exist (`learner status` of an unknown learner, `dlq show`
/// of an unknown id).
pub const NOT_FOUND: u8 = 3;
/// Input rejected by validation, nothing changed (`mapping set`).
pub const REJECTED: u8 = 4;
/// `backfill` finished, but some learners failed (see the summary).
pub const BACKFILL_FAILURES: u8 = 5;
/// `reconcile` found drift it did not repair (`--dry-run`, or `on_field_drift = "report"`).
pub const DRIFT_REMAINS: u8 = 6;
/// `reconcile` tried to repair and some repairs failed.
pub const REPAIRS_FAILED: u8 = 7;

/// The table printed after `--help` and kept in the README.
pub const HELP: &str = "\
Exit codes:
  0  done
  1  error: invalid configuration, a service unreachable, a command that failed
  2  usage error (unknown flag, missing argument)
  3  not found (learner status of an unknown learner, dlq show of an unknown id)
  4  input rejected, nothing changed (mapping set)
  5  backfill finished but some learners failed
  6  reconcile found drift it did not repair (--dry-run, on_field_drift = \"report\")
  7  reconcile: some repairs failed";

pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}

pub fn failure() -> ExitCode {
    ExitCode::from(FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_all_in_the_help() {
        let all = [
            OK,
            FAILURE,
            USAGE,
            NOT_FOUND,
            REJECTED,
            BACKFILL_FAILURES,
            DRIFT_REMAINS,
            REPAIRS_FAILED,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| b != a), "{a} used twice");
            assert!(HELP.contains(&format!("\n  {a}  ")), "{a} not in the help");
        }
    }
}
