//! Splitting a batch into the shares the components are called with, and calling them
//! on several cores at once.
//!
//! A share is one chain's events of some topics. A topic is never split across shares:
//! the built-in transformer relates events of one topic to each other (the tombstone
//! after a delete, the delete and create halves of a primary-key change, which
//! Debezium may put in different partitions), so every event of a topic must be in the
//! same call. With `parallelism` 1 a share is a chain's whole part of the batch, as
//! before shares existed.

use floe_host::types::{Batch, Event};

/// One call's input: events of chain `chain`, at `members` (positions in the batch, in
/// batch order).
pub(super) struct Share {
    pub(super) chain: usize,
    pub(super) members: Vec<usize>,
    pub(super) input: Batch,
}

/// The shares of `batch`: per chain (in chain order) at most `parallelism` shares,
/// its topics dealt to them largest first so the shares are about the same size. The
/// events move into the shares (no record's bytes are copied); [`restore`] puts them
/// back.
pub(super) fn shares(
    batch: &mut Batch,
    chain_of: &[usize],
    chains: usize,
    parallelism: usize,
) -> Vec<Share> {
    let mut events: Vec<Option<Event>> = std::mem::take(&mut batch.events)
        .into_iter()
        .map(Some)
        .collect();
    let mut out = Vec::new();
    for chain in 0..chains {
        let members: Vec<usize> = (0..chain_of.len())
            .filter(|&i| chain_of[i] == chain)
            .collect();
        if members.is_empty() {
            continue;
        }
        // Events per topic of this chain.
        let topic_of = |i: usize| events[i].as_ref().map_or(0, |e| e.topic as usize);
        let mut count = vec![0usize; batch.topics.len()];
        for &i in &members {
            count[topic_of(i)] += 1;
        }
        let mut topics: Vec<usize> = (0..count.len()).filter(|&t| count[t] > 0).collect();
        let bins = parallelism.clamp(1, topics.len());
        if bins == 1 {
            out.push(share(&batch.topics, &mut events, chain, members));
            continue;
        }
        // Largest topic first (ties: topic order), each to the least loaded share.
        topics.sort_by(|&a, &b| count[b].cmp(&count[a]).then(a.cmp(&b)));
        let mut load = vec![0usize; bins];
        let mut bin_of = vec![0usize; count.len()];
        for t in topics {
            let bin = (0..bins).min_by_key(|&b| (load[b], b)).unwrap_or(0);
            load[bin] += count[t];
            bin_of[t] = bin;
        }
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); bins];
        for i in members {
            parts[bin_of[topic_of(i)]].push(i);
        }
        out.extend(
            parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(|p| share(&batch.topics, &mut events, chain, p)),
        );
    }
    out
}

fn share(
    topics: &[String],
    events: &mut [Option<Event>],
    chain: usize,
    members: Vec<usize>,
) -> Share {
    let input = Batch {
        topics: topics.to_vec(),
        events: members.iter().filter_map(|&i| events[i].take()).collect(),
    };
    Share {
        chain,
        members,
        input,
    }
}

/// Puts the events of `shares` back into `batch`, in batch order.
pub(super) fn restore(batch: &mut Batch, shares: Vec<Share>) {
    let n = shares.iter().map(|s| s.members.len()).sum();
    let mut events: Vec<Option<Event>> = (0..n).map(|_| None).collect();
    for share in shares {
        for (i, e) in share.members.into_iter().zip(share.input.events) {
            events[i] = Some(e);
        }
    }
    batch.events = events.into_iter().flatten().collect();
}

/// `f` of every item, in order, at most `parallelism` at a time (the first of each
/// round on the calling thread, the others on scoped threads).
pub(super) fn map_parallel<I: Sync, T: Send>(
    items: &[I],
    parallelism: usize,
    f: impl Fn(&I) -> T + Sync,
) -> Vec<T> {
    let parallelism = parallelism.max(1);
    if items.len() <= 1 || parallelism == 1 {
        return items.iter().map(&f).collect();
    }
    let mut out = Vec::with_capacity(items.len());
    // The calls on other threads belong to the caller's trace span and subscriber.
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let span = tracing::Span::current();
    for round in items.chunks(parallelism) {
        let f = &f;
        let (dispatch, span) = (&dispatch, &span);
        std::thread::scope(|s| {
            let others: Vec<_> = round[1..]
                .iter()
                .map(|item| {
                    s.spawn(move || {
                        tracing::dispatcher::with_default(dispatch, || span.in_scope(|| f(item)))
                    })
                })
                .collect();
            out.push(f(&round[0]));
            for h in others {
                match h.join() {
                    Ok(t) => out.push(t),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_host::types::Event;

    fn batch(topics: &[u32]) -> Batch {
        Batch {
            topics: vec!["a".into(), "b".into(), "c".into()],
            events: topics
                .iter()
                .enumerate()
                .map(|(i, &topic)| Event {
                    topic,
                    partition: 0,
                    offset: i as i64,
                    timestamp_ms: None,
                    key: None,
                    value: None,
                })
                .collect(),
        }
    }

    fn offsets(b: &Batch) -> Vec<i64> {
        b.events.iter().map(|e| e.offset).collect()
    }

    #[test]
    fn one_share_per_chain_holds_the_batch_and_gives_it_back() {
        let mut b = batch(&[0, 1, 0, 2]);
        let s = shares(&mut b, &[0, 0, 0, 0], 1, 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].members, vec![0, 1, 2, 3]);
        assert_eq!(offsets(&s[0].input), vec![0, 1, 2, 3]);
        restore(&mut b, s);
        assert_eq!(offsets(&b), vec![0, 1, 2, 3]);
    }

    #[test]
    fn topics_are_dealt_whole_largest_first() {
        // a: 3 events, b: 2, c: 1 -> [a] and [b, c].
        let mut b = batch(&[1, 0, 2, 0, 1, 0]);
        let s = shares(&mut b, &[0; 6], 1, 2);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].members, vec![1, 3, 5]);
        assert_eq!(s[1].members, vec![0, 2, 4]);
        assert!(s[1].input.events.iter().all(|e| e.topic != 0));
        // Batch order inside each share.
        assert_eq!(offsets(&s[1].input), vec![0, 2, 4]);
        restore(&mut b, s);
        assert_eq!(offsets(&b), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_topic_is_never_split_and_chains_stay_apart() {
        let mut b = batch(&[0, 0, 0, 1]);
        let s = shares(&mut b, &[0, 0, 1, 1], 2, 4);
        let parts: Vec<(usize, Vec<usize>)> =
            s.iter().map(|s| (s.chain, s.members.clone())).collect();
        assert_eq!(parts, vec![(0, vec![0, 1]), (1, vec![2]), (1, vec![3])]);
        restore(&mut b, s);
        assert_eq!(offsets(&b), vec![0, 1, 2, 3]);
    }

    #[test]
    fn parallel_results_keep_item_order() {
        let items: Vec<usize> = (0..7).collect();
        let out = map_parallel(&items, 3, |&i| {
            std::thread::sleep(std::time::Duration::from_millis((7 - i as u64) * 3));
            i * 10
        });
        assert_eq!(out, vec![0, 10, 20, 30, 40, 50, 60]);
    }
}
