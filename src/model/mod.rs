//! Layers (one file each, `forward` and `backward` side by side) and the models built from them.

pub mod cross;
pub mod embedding;
pub mod gate;
pub mod gatenu;
pub mod head;
pub mod kmeans;
pub mod linear;
pub mod mlp;
pub mod rq;
pub mod wide;
