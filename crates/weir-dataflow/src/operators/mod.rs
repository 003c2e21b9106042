//! Weir's own stateful operators, built on [`crate::operator`], and the
//! names a TOML job calls them by (`[[operator]] kind = "..."`).
//!
//! | kind | what it computes |
//! |---|---|
//! | `top_k` | the `k` largest values of a column per key and tumbling window ([`top_k`]) |

pub mod top_k;

use std::sync::Arc;

use crate::operator::OperatorFactory;

/// The operator a TOML `[[operator]]` table describes.
pub fn from_toml(table: toml::Table) -> Result<Arc<dyn OperatorFactory>, String> {
    let kind = table
        .get("kind")
        .and_then(|kind| kind.as_str())
        .ok_or("an operator needs a `kind` (one of: top_k)")?
        .to_string();
    match kind.as_str() {
        "top_k" => Ok(Arc::new(top_k::TopK::from_toml(table)?)),
        other => Err(format!("`{other}` is not an operator kind (one of: top_k)")),
    }
}
