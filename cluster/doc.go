// Package cluster makes mxlb nodes one cluster: membership and failure
// detection over hashicorp/memberlist (encrypted gossip), node metadata
// (drain state, held VIPs, admin address, version), and a replicated
// key/value store persisted in the state directory. It knows nothing about
// SMTP, DNS or what the keys mean: the caller maps its spec onto keys such as
// "pool/mx" and opaque values.
//
// # Store
//
// Every key holds an Entry versioned by (Lamport, Node): last writer wins,
// and a deletion is a tombstone with its own version, so "remove then re-add"
// orders like any two writes. Lamport is a hybrid logical clock: it is
// larger than every version the node has seen and never behind its wall
// clock in milliseconds. A node with a clock far ahead therefore wins
// concurrent writes while it is ahead; that is the usual price of LWW.
//
// Changes spread three ways: a local write (or batch, see Node.Apply) is
// sent at once over TCP to every live member (a few milliseconds; it does
// not wait for a gossip tick nor depend on random gossip targets); it is also
// queued as deltas in memberlist's gossip queue (a newer delta of a key
// replaces an older one; a node that learns something new from gossip
// re-gossips it); and every push/pull interval each node exchanges its whole
// store with one random member (anti-entropy), which repairs anything lost
// and merges the two sides of a healed partition. Merging is MergeAll: commutative, associative and
// idempotent, so replicas agree whatever the order of delivery.
//
// # Tombstone garbage collection without resurrection
//
// Tombstones are kept for TombstoneTTL (24 h by default) after DeletedAt and
// then dropped. Dropping one alone would let a replica that missed the
// deletion (a node down or partitioned for longer than the TTL) bring the
// deleted value back. So each replica keeps a watermark W: when it drops a
// tombstone of Lamport L, W becomes at least L+1. A key a replica does not
// hold counts, when it is merged with another replica's state, as a
// tombstone at version (W, ""): an entry older than W that the other side
// still holds loses to it, is turned into that tombstone on both sides and
// gossiped, and never comes back. Because versions track wall time, W is
// roughly "the deletion time of the newest tombstone collected", so only
// entries older than that are affected: nothing written since survives or
// dies by this rule. Merges take the larger W, so a fresh node inherits it.
//
// The one loss this rule accepts: a value written on one side of a
// partition that lasted longer than the TTL, older than a tombstone the
// other side has collected, and never seen by that side, is treated as
// deleted when the partition heals (the alternative is that deleted values
// come back). With a 24 h TTL that needs a partition of more than a day. A
// node restored with an old state directory is handled by the same rule.
//
// # Persistence
//
// The whole store is one JSON file (StateFileName) written atomically
// (temporary file, fsync, rename, directory fsync). Local writes return
// after their change is on disk (concurrent writers share one write);
// changes learned from peers are written within about 20 ms, bursts
// coalesced. The file is loaded by New; a file that cannot be read back
// exactly is an error, never a silent empty start.
//
// # Seeding
//
// The node file's spec seeds the cluster only when the cluster has none.
// A fresh node cannot know that until it has talked to a peer: Synced is
// closed after the first full state exchange with a peer (the join's
// push/pull, which merges the cluster's store before Join returns, or a
// peer's push/pull), or at once when the node has no peer to join. The
// caller waits for Synced (for as long as it is willing to wait for absent
// peers), then calls SeedIfEmpty, which writes only into an empty replica
// and at the lowest version, so a seed never overrides anything the cluster
// holds even if it raced with a join. A replica that holds only tombstones
// or has collected some is not empty: a spec deleted on purpose is not
// re-seeded.
//
// # Failure detection
//
// Config.FailoverBudget maps onto memberlist's probe interval, probe
// timeout, suspicion multiplier and gossip interval (TimingsFor documents
// the mapping and its trade-off). A gracefully stopped node leaves and is
// seen gone within a gossip round. memberlist never contacts a member it
// declared dead again, so a Node retries dead members every
// ReconnectInterval: that is what re-merges the two halves of a partition.
//
// # Security
//
// With Config.Key every packet and stream is AES-GCM encrypted and
// unencrypted or wrongly keyed gossip is refused; memberlist's decryption
// failures are logged as warnings naming the peer's address (at most every
// 30 s per peer). Without a key Run logs a loud warning.
//
// # Concurrency
//
// A Node's methods are safe for concurrent use. memberlist's callbacks
// (deltas, push/pull, membership events) never block: they take the store's
// mutex briefly, queue gossip, and signal the persister and subscribers
// through one-slot channels.
package cluster
