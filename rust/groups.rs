//! Per-group ranks for the index's "at most N rows per prompt" cap.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Each row's rank (0-based) among the rows of its group, counting rows in
/// the order `order` visits them (a permutation of `0..groups.len()`).
///
/// Group codes are small non-negative integers (dictionary codes), counted in
/// a dense table; any other value (e.g. -1 for a null) is counted in a map.
/// One pass, no sort.
pub fn rank_in_group(groups: &[i64], order: &[i64]) -> Result<Vec<i64>> {
    let n = groups.len();
    if order.len() != n {
        return Err(Error::InvalidArgument(format!("{n} group codes but an order of {} rows", order.len())));
    }
    // A dense table when the codes allow it (at most a few times the rows), else a map.
    let max = groups.iter().copied().filter(|&g| g >= 0).max().unwrap_or(-1);
    let dense_len = if max < 0 { 0 } else { max as usize + 1 };
    let use_dense = dense_len <= 4 * n + 1024;
    let mut dense = vec![0i64; if use_dense { dense_len } else { 0 }];
    let mut sparse: HashMap<i64, i64> = HashMap::new();
    let mut rank = vec![-1i64; n];
    for &row in order {
        let r = usize::try_from(row)
            .ok()
            .filter(|&r| r < n && rank[r] < 0)
            .ok_or_else(|| Error::InvalidArgument(format!("order is not a permutation of 0..{n}: {row}")))?;
        let g = groups[r];
        let count = if use_dense && g >= 0 { &mut dense[g as usize] } else { sparse.entry(g).or_insert(0) };
        rank[r] = *count;
        *count += 1;
    }
    Ok(rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_the_visiting_order() {
        let groups = [5, 1, 5, -1, 1, 5, -1];
        let order = [6, 5, 4, 3, 2, 1, 0];
        assert_eq!(rank_in_group(&groups, &order).unwrap(), vec![2, 1, 1, 1, 0, 0, 0]);
        let identity: Vec<i64> = (0..7).collect();
        assert_eq!(rank_in_group(&groups, &identity).unwrap(), vec![0, 0, 1, 0, 1, 2, 1]);
    }

    #[test]
    fn sparse_codes_give_the_same_ranks() {
        let groups = [1_000_000_000, 3, 1_000_000_000, 3];
        assert_eq!(rank_in_group(&groups, &[0, 1, 2, 3]).unwrap(), vec![0, 0, 1, 1]);
    }

    #[test]
    fn rejects_an_order_that_is_not_a_permutation() {
        assert!(rank_in_group(&[0, 0], &[0]).is_err());
        assert!(rank_in_group(&[0, 0], &[0, 0]).is_err());
        assert!(rank_in_group(&[0, 0], &[0, 2]).is_err());
        assert!(rank_in_group(&[0, 0], &[0, -1]).is_err());
    }
}

/// Connected components of the undirected graph on nodes `0..n` with edges
/// `(a[i], b[i])`: each node's label is the smallest node id of its component.
/// Union-find with path halving, linking the larger root under the smaller.
pub fn connected_components(n: usize, a: &[i64], b: &[i64]) -> Result<Vec<i64>> {
    if a.len() != b.len() {
        return Err(Error::InvalidArgument(format!("{} edge starts but {} edge ends", a.len(), b.len())));
    }
    let node = |x: i64| {
        usize::try_from(x)
            .ok()
            .filter(|&x| x < n)
            .ok_or_else(|| Error::InvalidArgument(format!("edge end {x} is not a node of 0..{n}")))
    };
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for (&x, &y) in a.iter().zip(b) {
        let (rx, ry) = (find(&mut parent, node(x)?), find(&mut parent, node(y)?));
        if rx != ry {
            let (lo, hi) = if rx < ry { (rx, ry) } else { (ry, rx) };
            parent[hi] = lo;
        }
    }
    Ok((0..n).map(|x| find(&mut parent, x) as i64).collect())
}

#[cfg(test)]
mod component_tests {
    use super::connected_components;

    #[test]
    fn labels_are_the_smallest_node_of_each_component() {
        // 0-3, 3-1 form one component; 2 alone; 4-5 another.
        let labels = connected_components(6, &[0, 3, 5], &[3, 1, 4]).unwrap();
        assert_eq!(labels, vec![0, 0, 2, 0, 4, 4]);
    }

    #[test]
    fn a_long_chain_is_one_component() {
        let n = 10_000;
        let a: Vec<i64> = (1..n as i64).rev().collect();
        let b: Vec<i64> = (0..n as i64 - 1).rev().collect();
        assert!(connected_components(n, &a, &b).unwrap().iter().all(|&l| l == 0));
    }

    #[test]
    fn out_of_range_ends_are_errors() {
        assert!(connected_components(2, &[0], &[2]).is_err());
        assert!(connected_components(2, &[-1], &[0]).is_err());
        assert!(connected_components(2, &[0, 1], &[0]).is_err());
    }
}
