//! What a binary says it reads: the `.env` template `<binary> env`
//! prints, which the deployment checks hold the compose file and the
//! Kubernetes manifests to.

use std::collections::BTreeSet;
use std::process::Command;

use crate::binary;

/// The variables a binary reads, from its `env` template.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    /// Uncommented `NAME=` lines: a deployment must set them.
    pub required: BTreeSet<String>,
    /// Every variable listed, required or commented out with its default.
    pub known: BTreeSet<String>,
}

impl Variables {
    /// What workspace binary `name` prints for `env`, run with nothing of
    /// the test's environment (nor a `.env` file) to sway it.
    ///
    /// # Panics
    /// When the binary cannot be built or run, or `env` fails.
    pub fn of(name: &str) -> Self {
        let scratch = tempfile::tempdir().expect("a temporary directory");
        let output = Command::new(binary(name))
            .arg("env")
            .env_clear()
            .current_dir(scratch.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{name} env`: {e}"));
        assert!(
            output.status.success(),
            "`{name} env` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Self::parse(&String::from_utf8_lossy(&output.stdout))
    }

    pub fn parse(template: &str) -> Self {
        let mut variables = Self::default();
        for line in template.lines() {
            if let Some(name) = assigned_variable(line) {
                variables.required.insert(name.to_owned());
                variables.known.insert(name.to_owned());
            } else if let Some(name) = line.strip_prefix("# ").and_then(assigned_variable) {
                variables.known.insert(name.to_owned());
            }
        }
        variables
    }
}

/// `NAME` of a line `NAME=…` (`^[A-Z][A-Z0-9_]*=`).
fn assigned_variable(line: &str) -> Option<&str> {
    let (name, _) = line.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_uppercase()
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
    .then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_read_as_required_and_optional_variables() {
        let variables = Variables::parse(
            "# NATS server(s)\nNATS_URL=\n# prefix of every subject\n# MC_SUBJECT_PREFIX=mc\n",
        );
        assert_eq!(variables.required, BTreeSet::from(["NATS_URL".to_owned()]));
        assert_eq!(
            variables.known,
            BTreeSet::from(["NATS_URL".to_owned(), "MC_SUBJECT_PREFIX".to_owned()])
        );
    }
}
