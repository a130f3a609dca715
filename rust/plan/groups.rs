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

/// Each key's number in order of first appearance (0, 1, 2... as a loop over
/// `keys` hands them out).
pub fn first_use_numbering(keys: &[i64]) -> Vec<i64> {
    let mut number: rustc_hash::FxHashMap<i64, i64> = Default::default();
    number.reserve(keys.len() / 2);
    keys.iter()
        .map(|&k| {
            let next = number.len() as i64;
            *number.entry(k).or_insert(next)
        })
        .collect()
}

/// The split of planned rows over ranks (see `hpd_encode.pipeline.plan.partition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub rank_of_row: Vec<i64>,
    /// Distinct (image, size) jobs over all ranks.
    pub jobs: usize,
    /// Pixels each rank encodes, each job once.
    pub cost_per_rank: Vec<i64>,
}

/// Each row's two jobs, numbered by first use (row by row, chosen side then rejected side), and
/// the row that first used each job. With `share` a job is an image id at the row's bucket (rows
/// comparing an image at one size share its job); without, every row has two jobs of its own.
pub fn number_jobs(id1: &[i64], id2: &[i64], bucket: &[i64], share: bool) -> (Vec<i64>, Vec<i64>, Vec<usize>) {
    let n = id1.len();
    let (mut chosen, mut rejected) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut first_row: Vec<usize> = Vec::new();
    if share {
        let mut jobs = JobNumbers::new(id1, id2, n);
        for i in 0..n {
            for (id, side) in [(id1[i], &mut chosen), (id2[i], &mut rejected)] {
                let next = first_row.len() as i64;
                let j = jobs.number(id, bucket[i], next);
                if j == next {
                    first_row.push(i);
                }
                side.push(j);
            }
        }
    } else {
        for i in 0..n {
            chosen.push(2 * i as i64);
            rejected.push(2 * i as i64 + 1);
            first_row.extend([i, i]);
        }
    }
    (chosen, rejected, first_row)
}

/// Jobs `(image id, bucket)` numbered by first use. Image ids are dense in practice (positions in
/// an image list): then each image keeps the job of the first bucket it was used at in a slot, and
/// only an image used at a second bucket goes to a hash map, so that numbering a million rows
/// touches a few MB rather than a hash table of every job (a tenth of a second at HPDv3 scale, and
/// more with eight ranks sharing the caches).
struct JobNumbers {
    /// Per image id: (bucket, job) of its first use, or `(i32::MIN, _)`; empty when ids are sparse
    /// (8 bytes a slot: under torchrun the ids are in hash order, so the slots are met at random,
    /// and a smaller table misses the caches less).
    first: Vec<(i32, u32)>,
    others: rustc_hash::FxHashMap<(i64, i64), i64>,
}

impl JobNumbers {
    fn new(id1: &[i64], id2: &[i64], n: usize) -> Self {
        let (lo, hi) = id1.iter().chain(id2).fold((i64::MAX, i64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        // (job numbers, at most 2n, must fit the slot's u32)
        let dense = n > 0 && lo >= 0 && (hi as u64) < 4 * n as u64 + 1024 && 2 * (n as u64) < u32::MAX as u64;
        let first = if dense { vec![(i32::MIN, 0); hi as usize + 1] } else { Vec::new() };
        let mut others: rustc_hash::FxHashMap<(i64, i64), i64> = Default::default();
        if !dense {
            others.reserve(2 * n);
        }
        JobNumbers { first, others }
    }

    /// The number of job `(id, bucket)`: `next` when it is new.
    fn number(&mut self, id: i64, bucket: i64, next: i64) -> i64 {
        // A bucket outside i32 (or i32::MIN itself, the empty mark) goes to the map.
        let slot = usize::try_from(id).ok().and_then(|k| self.first.get_mut(k));
        if let (Some(slot), Ok(b)) = (slot, i32::try_from(bucket)) {
            if slot.0 == b && b != i32::MIN {
                return i64::from(slot.1);
            }
            if slot.0 == i32::MIN && b != i32::MIN {
                *slot = (b, next as u32);
                return next;
            }
        }
        *self.others.entry((id, bucket)).or_insert(next)
    }
}

/// Each row's rank: rows sharing a job (with `share`, a job is an image id at
/// the row's bucket; without, every row has two jobs of its own) form
/// components, and whole components go, largest pixel cost first (ties: the
/// smaller first record), to the least-loaded rank (ties: the lower rank).
/// `pixels` is each row's target size in pixels, `record` its record number
/// (unique per row).
pub fn partition(
    id1: &[i64],
    id2: &[i64],
    bucket: &[i64],
    pixels: &[i64],
    record: &[i64],
    world: usize,
    share: bool,
) -> Result<Split> {
    let n = id1.len();
    if [id2.len(), bucket.len(), pixels.len(), record.len()].iter().any(|&k| k != n) {
        return Err(Error::InvalidArgument("partition: the columns differ in length".into()));
    }
    if world == 0 {
        return Err(Error::InvalidArgument("partition: world size 0".into()));
    }
    let (chosen, rejected, first_row) = number_jobs(id1, id2, bucket, share);
    let jobs = first_row.len();
    // A job's pixels are those of the row that first uses it.
    if world == 1 {
        let total = first_row.iter().map(|&i| pixels[i]).sum();
        return Ok(Split { rank_of_row: vec![0; n], jobs, cost_per_rank: vec![total] });
    }
    // Each job's component, labelled by its smallest job.
    let root = connected_components(jobs, &chosen, &rejected)?;
    // Per component (indexed by its label): pixels and first record.
    let mut cost = vec![0i64; jobs];
    let mut first = vec![i64::MAX; jobs];
    for (&r, &i) in root.iter().zip(&first_row) {
        cost[r as usize] += pixels[i];
    }
    drop(first_row);
    for (i, &job) in chosen.iter().enumerate() {
        let c = root[job as usize] as usize;
        first[c] = first[c].min(record[i]);
    }
    let mut comps: Vec<usize> = (0..jobs).filter(|&j| root[j] == j as i64).collect();
    comps.sort_unstable_by(|&a, &b| cost[b].cmp(&cost[a]).then(first[a].cmp(&first[b])));
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(i64, usize)>> =
        (0..world).map(|r| std::cmp::Reverse((0, r))).collect();
    let mut rank_of_comp = vec![0u32; jobs];
    let mut cost_per_rank = vec![0i64; world];
    for c in comps {
        let std::cmp::Reverse((load, r)) = heap.pop().expect("world >= 1");
        rank_of_comp[c] = r as u32;
        cost_per_rank[r] += cost[c];
        heap.push(std::cmp::Reverse((load + cost[c], r)));
    }
    let rank_of_row = chosen.iter().map(|&job| i64::from(rank_of_comp[root[job as usize] as usize])).collect();
    Ok(Split { rank_of_row, jobs, cost_per_rank })
}

#[cfg(test)]
mod partition_tests {
    use super::{first_use_numbering, partition, JobNumbers};

    #[test]
    fn job_numbers_are_first_use_whether_ids_are_dense_or_not() {
        let mut x = 12345u64;
        let mut rnd = |m: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        for (span, offset) in [(50u64, 0i64), (5_000, 0), (50, -20), (50, 1 << 40)] {
            let n = 400;
            let ids1: Vec<i64> = (0..n).map(|_| rnd(span) as i64 + offset).collect();
            let ids2: Vec<i64> = (0..n).map(|_| rnd(span) as i64 + offset).collect();
            // Buckets mostly small; a few outside i32 (and i32::MIN, the slot's empty mark).
            let buckets: Vec<i64> = (0..n)
                .map(|_| match rnd(20) {
                    0 => 1 << 40,
                    1 => i32::MIN as i64,
                    k => (k % 3) as i64,
                })
                .collect();
            let mut jobs = JobNumbers::new(&ids1, &ids2, n);
            let mut map = std::collections::HashMap::new();
            for i in 0..n {
                for id in [ids1[i], ids2[i]] {
                    let next = map.len() as i64;
                    let want = *map.entry((id, buckets[i])).or_insert(next);
                    assert_eq!(jobs.number(id, buckets[i], next), want, "span {span} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn keys_are_numbered_by_first_appearance() {
        assert_eq!(first_use_numbering(&[50, 7, 50, -3, 7, 9]), vec![0, 1, 0, 2, 1, 3]);
        assert!(first_use_numbering(&[]).is_empty());
    }

    #[test]
    fn shared_jobs_keep_rows_together_and_the_largest_goes_first() {
        // Rows 0-1 share image 7 at bucket 0: one component of 3 jobs (300 px);
        // row 2 alone (2 jobs, 2 x 500 px); row 3 alone (2 x 10 px).
        let s = partition(&[7, 7, 1, 2], &[8, 9, 3, 4], &[0, 0, 1, 2], &[100, 100, 500, 10], &[0, 1, 2, 3], 2, true)
            .unwrap();
        assert_eq!(s.jobs, 7);
        assert_eq!(s.rank_of_row, vec![1, 1, 0, 1]);
        assert_eq!(s.cost_per_rank, vec![1000, 320]);
        let alone = partition(&[7, 7], &[8, 9], &[0, 0], &[100, 100], &[0, 1], 2, false).unwrap();
        assert_eq!((alone.jobs, alone.rank_of_row, alone.cost_per_rank), (4, vec![0, 1], vec![200, 200]));
        let one = partition(&[7, 7], &[8, 9], &[0, 0], &[100, 100], &[0, 1], 1, true).unwrap();
        assert_eq!((one.jobs, one.cost_per_rank), (3, vec![300]));
        assert!(partition(&[1], &[], &[], &[], &[], 2, true).is_err());
    }
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
