// Package tracestore compares the two embedded stores considered for the MTA-side trace
// store (modernc.org/sqlite and go.etcd.io/bbolt) on the trace workload: batched inserts of
// per-message records with five indexes (recipient, sender, queue id, message-id, time), then
// queries by recipient + time range. It is its own module so that the store not chosen stays
// out of mxlb's go.mod. Run: cd bench/tracestore && go test -run XXX -bench . -benchtime 1x
package tracestore

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// record has the shape and typical sizes of a trace record (one message, two recipients,
// one attempt each).
type attempt struct {
	Time   time.Time `json:"time"`
	Relay  string    `json:"relay,omitempty"`
	Delay  float64   `json:"delay,omitempty"`
	DSN    string    `json:"dsn,omitempty"`
	Status string    `json:"status"`
	Reply  string    `json:"reply,omitempty"`
}
type rcpt struct {
	Address  string    `json:"address"`
	Attempts []attempt `json:"attempts"`
}
type record struct {
	MTA        string    `json:"mta"`
	QueueID    string    `json:"queue_id"`
	MessageID  string    `json:"message_id"`
	Time       time.Time `json:"time"`
	ClientName string    `json:"client_name"`
	ClientIP   string    `json:"client_ip"`
	ClientPort int       `json:"client_port"`
	Sender     string    `json:"sender"`
	Size       int64     `json:"size"`
	Recipients []rcpt    `json:"recipients"`
}

const users = 50000 // distinct recipients: a query for one finds ~N/users*2 messages

func gen(n int) []record {
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	step := 7 * 24 * time.Hour / time.Duration(n)
	out := make([]record, n)
	for i := range out {
		t := base.Add(time.Duration(i) * step)
		q := strings12(r)
		out[i] = record{MTA: "mta1", QueueID: q, MessageID: fmt.Sprintf("<%d.%s@sender%d.example>", t.UnixNano(), q, r.IntN(1000)),
			Time: t, ClientName: fmt.Sprintf("mail%d.sender.example", r.IntN(1000)), ClientIP: fmt.Sprintf("198.18.%d.%d", r.IntN(256), r.IntN(256)),
			ClientPort: 1024 + r.IntN(60000), Sender: fmt.Sprintf("user%d@sender%d.example", r.IntN(users), r.IntN(1000)), Size: int64(2000 + r.IntN(50000))}
		for j := 0; j < 2; j++ {
			out[i].Recipients = append(out[i].Recipients, rcpt{Address: fmt.Sprintf("user%d@example.com", r.IntN(users)),
				Attempts: []attempt{{Time: t.Add(time.Second), Relay: "mx.example.com[198.18.9.9]:25", Delay: 0.4, DSN: "2.0.0", Status: "sent",
					Reply: "250 2.0.0 Ok: queued as " + strings12(r)}}})
		}
	}
	return out
}

func strings12(r *rand.Rand) string {
	const a = "0123456789ABCDEF"
	b := make([]byte, 10)
	for i := range b {
		b[i] = a[r.IntN(16)]
	}
	return string(b)
}

func n() int {
	if s := os.Getenv("TRACE_BENCH_N"); s != "" {
		v, _ := strconv.Atoi(s)
		return v
	}
	return 1_000_000
}

// batch is records per transaction: the follower commits a read chunk at once. fsync is off
// during the load (both stores) so that the numbers are the stores' CPU and layout, not this
// disk's flush latency; BenchmarkCommit* measure one synced small commit.
const batch = 1000

// --- bbolt: one bucket of records by sequence, one bucket per index with keys
// value \x00 time(8) seq(8) so that a cursor Seek walks one value's time range.

var idxNames = []string{"rcpt", "sender", "qid", "msgid", "time"}

func ikey(v string, t time.Time, id uint64) []byte {
	k := make([]byte, 0, len(v)+17)
	k = append(k, v...)
	k = append(k, 0)
	k = binary.BigEndian.AppendUint64(k, uint64(t.UnixNano()))
	return binary.BigEndian.AppendUint64(k, id)
}

func boltInsert(db *bolt.DB, recs []record) error {
	for i := 0; i < len(recs); i += batch {
		err := db.Update(func(tx *bolt.Tx) error {
			rb, _ := tx.CreateBucketIfNotExists([]byte("recs"))
			rb.FillPercent = 0.9 // appended in key order: pages need not split half full
			ib := map[string]*bolt.Bucket{}
			for _, n := range idxNames {
				ib[n], _ = tx.CreateBucketIfNotExists([]byte(n))
			}
			ib["time"].FillPercent = 0.9
			for _, r := range recs[i:min(i+batch, len(recs))] {
				id, _ := rb.NextSequence()
				v, _ := json.Marshal(r)
				if err := rb.Put(binary.BigEndian.AppendUint64(nil, id), v); err != nil {
					return err
				}
				for _, rc := range r.Recipients {
					ib["rcpt"].Put(ikey(rc.Address, r.Time, id), nil)
				}
				ib["sender"].Put(ikey(r.Sender, r.Time, id), nil)
				ib["qid"].Put(ikey(r.QueueID, r.Time, id), nil)
				ib["msgid"].Put(ikey(r.MessageID, r.Time, id), nil)
				ib["time"].Put(ikey("", r.Time, id), nil)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func boltQuery(db *bolt.DB, addr string, since, until time.Time) (int, error) {
	found := 0
	err := db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket([]byte("rcpt")).Cursor()
		recs := tx.Bucket([]byte("recs"))
		lo, hi := ikey(addr, since, 0), ikey(addr, until, ^uint64(0))
		for k, _ := c.Seek(lo); k != nil && bytes.Compare(k, hi) <= 0; k, _ = c.Next() {
			var r record
			if err := json.Unmarshal(recs.Get(k[len(k)-8:]), &r); err != nil {
				return err
			}
			found++
		}
		return nil
	})
	return found, err
}

// --- SQLite: the record as JSON in messages, recipients in their own table.

const schema = `
PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
CREATE TABLE messages(id INTEGER PRIMARY KEY, t INTEGER NOT NULL, qid TEXT, msgid TEXT, sender TEXT, data BLOB NOT NULL);
CREATE TABLE rcpts(msg INTEGER NOT NULL, rcpt TEXT NOT NULL, t INTEGER NOT NULL);
CREATE INDEX m_t ON messages(t); CREATE INDEX m_qid ON messages(qid); CREATE INDEX m_msgid ON messages(msgid);
CREATE INDEX m_sender ON messages(sender, t); CREATE INDEX r_rcpt ON rcpts(rcpt, t);`

func sqliteInsert(db *sql.DB, recs []record) error {
	for i := 0; i < len(recs); i += batch {
		tx, err := db.Begin()
		if err != nil {
			return err
		}
		m, _ := tx.Prepare(`INSERT INTO messages(t,qid,msgid,sender,data) VALUES(?,?,?,?,?)`)
		rc, _ := tx.Prepare(`INSERT INTO rcpts(msg,rcpt,t) VALUES(?,?,?)`)
		for _, r := range recs[i:min(i+batch, len(recs))] {
			v, _ := json.Marshal(r)
			res, err := m.Exec(r.Time.UnixNano(), r.QueueID, r.MessageID, r.Sender, v)
			if err != nil {
				return err
			}
			id, _ := res.LastInsertId()
			for _, a := range r.Recipients {
				if _, err := rc.Exec(id, a.Address, r.Time.UnixNano()); err != nil {
					return err
				}
			}
		}
		m.Close()
		rc.Close()
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

func sqliteQuery(db *sql.DB, addr string, since, until time.Time) (int, error) {
	rows, err := db.Query(`SELECT m.data FROM rcpts r JOIN messages m ON m.id = r.msg WHERE r.rcpt = ? AND r.t BETWEEN ? AND ?`,
		addr, since.UnixNano(), until.UnixNano())
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	found := 0
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return 0, err
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil {
			return 0, err
		}
		found++
	}
	return found, rows.Err()
}

// wchar is the bytes this process has passed to write(2) and friends so far.
func wchar() int64 {
	b, _ := os.ReadFile("/proc/self/io")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "wchar: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// cpu is this process's user+system CPU time so far.
func cpu() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func dirSize(dir string) int64 {
	var s int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			s += fi.Size()
		}
	}
	return s
}

// queries runs q over 1000 random recipients over a 24-hour window and reports p50/p99.
func queries(b *testing.B, q func(addr string, since, until time.Time) (int, error)) {
	r := rand.New(rand.NewPCG(3, 4))
	base := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	var lat []time.Duration
	hits := 0
	for i := 0; i < 1000; i++ {
		addr := fmt.Sprintf("user%d@example.com", r.IntN(users))
		since := base.Add(time.Duration(r.IntN(6*24)) * time.Hour)
		t0 := time.Now()
		n, err := q(addr, since, since.Add(24*time.Hour))
		lat = append(lat, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		hits += n
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[500].Microseconds()), "query-p50-µs")
	b.ReportMetric(float64(lat[990].Microseconds()), "query-p99-µs")
	b.ReportMetric(float64(hits)/1000, "hits/query")
}

func BenchmarkBbolt(b *testing.B) {
	recs := gen(n())
	for range b.N {
		dir := b.TempDir()
		db, err := bolt.Open(filepath.Join(dir, "t.db"), 0o600, &bolt.Options{NoFreelistSync: true, FreelistType: bolt.FreelistMapType, NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		w0, c0, t0 := wchar(), cpu(), time.Now()
		if err := boltInsert(db, recs); err != nil {
			b.Fatal(err)
		}
		el := time.Since(t0)
		b.ReportMetric(float64(el.Nanoseconds())/float64(len(recs)), "ns/record")
		b.ReportMetric(float64(wchar()-w0)/float64(len(recs)), "written-bytes/record")
		b.ReportMetric(float64((cpu()-c0).Nanoseconds())/float64(len(recs)), "cpu-ns/record")
		b.ReportMetric(float64(dirSize(dir))/float64(len(recs)), "disk-bytes/record")
		queries(b, func(a string, s, u time.Time) (int, error) { return boltQuery(db, a, s, u) })
		db.Close()
	}
}

func BenchmarkSQLite(b *testing.B) {
	recs := gen(n())
	for range b.N {
		dir := b.TempDir()
		db, err := sql.Open("sqlite", filepath.Join(dir, "t.db"))
		if err != nil {
			b.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		if _, err := db.Exec(schema); err != nil {
			b.Fatal(err)
		}
		w0, c0, t0 := wchar(), cpu(), time.Now()
		if err := sqliteInsert(db, recs); err != nil {
			b.Fatal(err)
		}
		el := time.Since(t0)
		if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(el.Nanoseconds())/float64(len(recs)), "ns/record")
		b.ReportMetric(float64(wchar()-w0)/float64(len(recs)), "written-bytes/record")
		b.ReportMetric(float64((cpu()-c0).Nanoseconds())/float64(len(recs)), "cpu-ns/record")
		b.ReportMetric(float64(dirSize(dir))/float64(len(recs)), "disk-bytes/record")
		queries(b, func(a string, s, u time.Time) (int, error) { return sqliteQuery(db, a, s, u) })
		db.Close()
	}
}
