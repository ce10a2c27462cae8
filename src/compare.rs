//! `compare`: several models over several seeds on the same data, in the paper's Table-1 layout.

use crate::cli::CompareArgs;
use crate::error::{Error, Result};

/// Runs the comparison.
pub fn run(_a: CompareArgs) -> Result<()> {
    Err(Error::Other("compare is not implemented yet".into()))
}
