//! The `command` executor: runs a configured program per phase (any agent CLI). Being
//! written; see the issue.
