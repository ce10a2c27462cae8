//! Helpers shared by the tests that compare two passes of a model bit for bit
//! (`distinct_keys`, `training_lanes`).
#![allow(dead_code)]

use hmdn_cpu::model::Model;
use hmdn_kernels::Real;

/// Dense gradients and every table's row gradients, as bits.
pub fn grad_bits<T: Real>(m: &mut Model<T>) -> Vec<u64> {
    let (ps, rgs) = m.params_and_row_grads();
    let mut g: Vec<u64> = ps.grads.iter().map(|v| v.to_f64().to_bits()).collect();
    for rg in rgs {
        let mut dense = vec![T::ZERO; ps.range(rg.table).len()];
        rg.add_to_dense(&mut dense);
        g.extend(dense.iter().map(|v| v.to_f64().to_bits()));
    }
    g
}

/// The values as bits.
pub fn bits<T: Real>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}
