//! Layers (one file each, `forward` and `backward` side by side) and the models built from them.

pub mod linear;
