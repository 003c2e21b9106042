//! The dataflow's timestamp.

use timely::order::Product;

/// Timely time of every batch: `(epoch, watermark)`, a product order.
pub type Time = Product<u64, u64>;
