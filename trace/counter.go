package trace

// Counter names a per-MTA delivery counter. Deliveries count attempts per recipient; DSN
// classes count attempts and rejects by the first digit of their DSN (or of their status when
// the log gives no DSN: sent 2, deferred 4, bounced/expired/rejected 5).
type Counter string

// Counters.
const (
	CReceived Counter = "received"
	CSent     Counter = "sent"
	CDeferred Counter = "deferred"
	CBounced  Counter = "bounced"
	CExpired  Counter = "expired"
	CRejected Counter = "rejected"
	CDSN2     Counter = "dsn_2"
	CDSN4     Counter = "dsn_4"
	CDSN5     Counter = "dsn_5"
)

// Counters lists every counter, in a fixed order.
var Counters = []Counter{CReceived, CSent, CDeferred, CBounced, CExpired, CRejected, CDSN2, CDSN4, CDSN5}

// ValidCounter says whether c is one of Counters.
func ValidCounter(c Counter) bool {
	for _, k := range Counters {
		if k == c {
			return true
		}
	}
	return false
}

// Count is n events of one counter in the minute starting at Minute (unix seconds).
type Count struct {
	Counter Counter
	Minute  int64
	N       uint64
}

// DSNClass returns the counter of an attempt's DSN class.
func DSNClass(dsn string, st Status) Counter {
	c := byte(0)
	if dsn != "" {
		c = dsn[0]
	}
	switch {
	case c == '2' || (c == 0 && st == Sent):
		return CDSN2
	case c == '4' || (c == 0 && st == Deferred):
		return CDSN4
	default:
		return CDSN5
	}
}

// StatusCounter returns the counter of an attempt's status.
func StatusCounter(st Status) Counter {
	switch st {
	case Sent:
		return CSent
	case Deferred:
		return CDeferred
	case Bounced:
		return CBounced
	case Expired:
		return CExpired
	default:
		return CRejected
	}
}
