//! Who probes which image under torchrun, from every rank's image hashes.
//!
//! Each rank names the images of its records by a 64-bit hash of the path and
//! sends the others its distinct hashes, sorted. From all of them every rank
//! works out the same things: the image ids (an image's position among all the
//! distinct hashes, sorted) and, for each image, which of the ranks that saw
//! it probes it (one of them, picked by the hash, so that each rank probes
//! about its share). A rank keeps only what concerns it: the ids of its own
//! hashes, the images it probes and, for each of those, the ranks to send the
//! size to.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::error::{Error, Result};

/// What one rank learns from every rank's hashes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Owners {
    /// Distinct images over all ranks.
    pub n_images: usize,
    /// The id of each of this rank's hashes.
    pub ids: Vec<i64>,
    /// The images this rank probes, as positions in its own hashes (ascending).
    pub probe: Vec<i64>,
    /// The ranks that saw each probed image (this one among them), in rank order:
    /// `seers[seer_start[k]..seer_start[k + 1]]` for `probe[k]`.
    pub seer_start: Vec<i64>,
    pub seers: Vec<i32>,
}

/// [`Owners`] for `rank`, from `seen[r]`: rank `r`'s distinct hashes, ascending.
pub fn owners(seen: &[&[u64]], rank: usize) -> Result<Owners> {
    if rank >= seen.len() {
        return Err(Error::InvalidArgument(format!("rank {rank} of {} ranks", seen.len())));
    }
    for (r, s) in seen.iter().enumerate() {
        if s.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(format!("rank {r}'s hashes are not sorted and distinct")));
        }
    }
    let mine = seen[rank];
    let mut out = Owners { ids: vec![-1; mine.len()], seer_start: vec![0], ..Owners::default() };
    // A merge of the sorted lists: the smallest head first, ties in rank order.
    let mut heads: BinaryHeap<Reverse<(u64, usize)>> =
        seen.iter().enumerate().filter_map(|(r, s)| s.first().map(|&h| Reverse((h, r)))).collect();
    let mut next = vec![0usize; seen.len()];
    let mut group: Vec<usize> = Vec::new(); // the ranks that saw the current hash
    while let Some(&Reverse((hash, _))) = heads.peek() {
        group.clear();
        while let Some(&Reverse((h, r))) = heads.peek() {
            if h != hash {
                break;
            }
            heads.pop();
            group.push(r);
            next[r] += 1;
            if let Some(&h) = seen[r].get(next[r]) {
                heads.push(Reverse((h, r)));
            }
        }
        let id = out.n_images as i64;
        out.n_images += 1;
        if group.binary_search(&rank).is_ok() {
            let at = next[rank] - 1;
            out.ids[at] = id;
            if group[(hash % group.len() as u64) as usize] == rank {
                out.probe.push(at as i64);
                out.seers.extend(group.iter().map(|&r| r as i32));
                out.seer_start.push(out.seers.len() as i64);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against the plain way: all hashes sorted, each owned by the seer its hash picks.
        #[test]
        fn every_rank_agrees_and_each_image_has_one_prober(
            lists in proptest::collection::vec(proptest::collection::btree_set(0u64..60, 0..30), 1..6),
        ) {
            let seen: Vec<Vec<u64>> = lists.iter().map(|s| s.iter().copied().collect()).collect();
            let slices: Vec<&[u64]> = seen.iter().map(|s| &s[..]).collect();
            let mut all: Vec<u64> = seen.concat();
            all.sort();
            all.dedup();
            let mut probed = vec![0; all.len()];
            for rank in 0..seen.len() {
                let o = owners(&slices, rank).unwrap();
                prop_assert_eq!(o.n_images, all.len());
                for (h, &id) in seen[rank].iter().zip(&o.ids) {
                    prop_assert_eq!(all.binary_search(h).unwrap() as i64, id);
                }
                for (k, &p) in o.probe.iter().enumerate() {
                    let h = seen[rank][p as usize];
                    let who: Vec<i32> = (0..seen.len()).filter(|&r| seen[r].contains(&h)).map(|r| r as i32).collect();
                    let (a, b) = (o.seer_start[k] as usize, o.seer_start[k + 1] as usize);
                    prop_assert_eq!(&o.seers[a..b], &who[..]);
                    prop_assert_eq!(who[(h % who.len() as u64) as usize], rank as i32);
                    probed[o.ids[p as usize] as usize] += 1;
                }
            }
            prop_assert!(probed.iter().all(|&n| n == 1));
        }
    }

    #[test]
    fn unsorted_hashes_and_a_rank_out_of_range_are_refused() {
        assert!(owners(&[&[3, 1]], 0).is_err());
        assert!(owners(&[&[1, 1]], 0).is_err());
        assert!(owners(&[&[1]], 1).is_err());
        assert_eq!(owners(&[&[], &[]], 1).unwrap().n_images, 0);
    }
}
