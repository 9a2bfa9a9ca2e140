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
// deleted value back. So each replica keeps watermarks, one per key bucket
// (a fixed hash of the key into WatermarkBuckets = 1024 buckets): when it
// drops the tombstone of key k at Lamport L, the watermark W of k's bucket
// becomes at least L+1. A key a replica does not hold counts, when it is
// merged with another replica's state, as a tombstone at version (W, "")
// where W is that replica's watermark for the key's bucket: an entry older
// than W that the other side still holds loses to it, is turned into that
// tombstone on both sides and gossiped, and never comes back. Merges take
// the larger watermark bucket by bucket, so a fresh node inherits them. (A
// state file or peer of format 1 has a single watermark: it counts for
// every bucket.)
//
// The one loss this rule accepts, exactly: an entry e is treated as deleted
// when a replica R that holds neither e nor anything newer for e's key has
// collected a tombstone with a higher version than e for a key of the same
// bucket (e's own key or, by hash collision, another: about 1 in 1024 per
// distinct collected key). R must not have seen e for the whole TTL of that
// tombstone, so this takes a partition (or a message delay) longer than the
// TTL: with the 24 h default, more than a day. Real-time order does not
// matter here: an entry written after a deletion but with a lower Lamport
// (the deleting node's clock ahead) is safe from every collected tombstone
// of another bucket, and one written before a later deletion elsewhere is
// too. The alternative to this loss is that deleted values come back. A
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
// Config.FailoverBudget maps onto a fast heartbeat (heartbeat.go: a crashed
// member is Reachable=false within about half the budget, which is what the
// VIP layer acts on) and onto memberlist's probe interval, probe timeout,
// suspicion and gossip interval (TimingsFor documents the mapping and its
// trade-off; memberlist's verdict, Alive=false, comes later and is tolerant of
// slow members). A node starved of CPU accuses nobody: its own stalls do not
// count against other members' silence, and it judges only once its echo
// through its own gossip socket has come back. Member.State sums a member up
// (alive, unreachable, dead, left) and Config.OnMemberEvent receives each
// transition. A gracefully stopped node leaves (left, not dead) and is seen
// gone within a gossip round. memberlist never contacts a member it
// declared dead again, so a Node retries dead members every
// ReconnectInterval: that is what re-merges the two halves of a partition.
//
// # Security
//
// With Config.Key every packet and stream is AES-GCM encrypted and
// unencrypted or wrongly keyed gossip is refused. Refused gossip (another key,
// another label, garbage) is logged as one warning per source host and kind per
// minute, with the count of refusals it stands for (counts held back are logged
// when the minute ends): a stray sender cannot flood the log. A refused UDP
// packet names the sender's cluster address (its gossip port); a refused join
// arrives over TCP from an ephemeral port, so a node whose join fails also sends
// the peer one packet from its gossip socket, and the refusing node can name it.
// Without a key Run logs a loud warning.
//
// # Concurrency
//
// A Node's methods are safe for concurrent use. memberlist's callbacks
// (deltas, push/pull, membership events) never block: they take the store's
// mutex briefly, queue gossip, and signal the persister and subscribers
// through one-slot channels.
package cluster
