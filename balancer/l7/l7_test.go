package l7

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"

	"github.com/emersion/go-smtp"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

// body8 is an 8-bit, UTF-8 message with lines that need dot-stuffing.
var body8 = []byte("From: Jörg <jörg@exämple.test>\r\nTo: ü@exämple.test\r\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n\r\n" +
	".leading dot\r\n..two dots\r\n.\r\nGrüße, 日本語, \xe2\x82\xac and raw \xff\xfe bytes\r\n")

func TestRelayByteIdentical(t *testing.T) {
	for _, chunking := range []bool{true, false} {
		t.Run(fmt.Sprintf("chunking=%v", chunking), func(t *testing.T) {
			m := newFakeMTA(t, "a", faultNone, nil)
			tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
			f := startFront(t, tb, config.Frontend{}, func(o *Options) { o.NoChunking = !chunking })
			text, err := send(f.addr, "jörg@exämple.test", []string{"ü@exämple.test", "b@example.test"}, body8,
				&smtp.MailOptions{UTF8: true, Body: smtp.Body8BitMIME, Size: int64(len(body8))})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(text, "queued as A") {
				t.Errorf("DATA reply %q does not relay the backend's", text)
			}
			msgs := m.messages()
			if len(msgs) != 1 {
				t.Fatalf("backend has %d messages", len(msgs))
			}
			got := msgs[0]
			if hash(got.body) != hash(body8) {
				t.Errorf("body differs:\n got %q\nwant %q", got.body, body8)
			}
			if !got.opts.UTF8 || got.opts.Body != smtp.Body8BitMIME || got.opts.Size != int64(len(body8)) {
				t.Errorf("MAIL parameters not passed on: %+v", got.opts)
			}
			if got.from != "jörg@exämple.test" || len(got.rcpts) != 2 {
				t.Errorf("envelope %q %v", got.from, got.rcpts)
			}
			recs := f.log.Records("txn")
			if len(recs) != 1 {
				t.Fatalf("%d txn log lines, want 1", len(recs))
			}
			r := recs[0]
			if r["outcome"] != "ok" || r["helo"] != "client.test" || r["rcpts"] != float64(2) || r["size"] != float64(len(body8)) ||
				!strings.HasPrefix(r["queue_id"].(string), "A") || r["backend"] != m.addr() || r["pool"] != "mx" || r["tls"] != false {
				t.Errorf("log line %v", r)
			}
		})
	}
}

func TestRetryOrderAndNoLoss(t *testing.T) {
	refused := mxtest.RefusedAddr(t)
	busy := newRawMTA(t, map[string]string{"": "421 4.3.2 busy\r\n"})
	tempfail := newFakeMTA(t, "tempfail", faultMail451, nil)
	dropper := newFakeMTA(t, "dropper", faultDropInData, nil)
	full := newFakeMTA(t, "full", faultData452, nil)
	fb := newFakeMTA(t, "fb", faultNone, nil)
	tb := table(t,
		config.Pool{Name: "mx", Fallback: "fallback", Backends: backends(refused, busy.addr(), tempfail.addr(), dropper.addr(), full.addr())},
		config.Pool{Name: "fallback", Backends: backends(fb.addr())})
	var mu sync.Mutex
	sick := map[string]int{}
	var fronts []*front
	for _, chunking := range []bool{true, false} {
		fronts = append(fronts, startFront(t, tb, config.Frontend{}, func(o *Options) {
			o.MaxAttempts = 10
			o.PassiveFails = 1
			o.OnBackendFailing = func(k pool.Key, _ string) { mu.Lock(); sick[k.Addr]++; mu.Unlock() }
			o.NoChunking = !chunking
		}))
	}
	f := fronts[0]
	for _, f := range fronts {
		text, err := send(f.addr, "a@example.test", []string{"b@example.test"}, body8, nil)
		if err != nil {
			t.Fatalf("client saw a failure: %v", err)
		}
		if !strings.Contains(text, "queued as FB") {
			t.Errorf("reply %q not from the fallback", text)
		}
	}
	if n := len(fb.messages()); n != 2 {
		t.Fatalf("fallback got %d messages, want 2", n)
	}
	for _, m := range []*fakeMTA{tempfail, dropper, full} {
		if n := len(m.messages()); n != 0 {
			t.Errorf("%s stored %d messages", m.name, n)
		}
	}
	for _, m := range fb.messages() {
		if hash(m.body) != hash(body8) {
			t.Errorf("fallback body differs")
		}
	}
	// Every mx backend was offered each transaction before the fallback pool.
	r := f.log.Records("txn")[0]
	if r["attempts"] != float64(6) {
		t.Errorf("attempts %v, want 6 (5 mx + fallback)", r["attempts"])
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range []string{refused, busy.addr(), tempfail.addr(), dropper.addr(), full.addr()} {
		if sick[a] == 0 {
			t.Errorf("backend %s not reported failing", a)
		}
	}
	if sick[fb.addr()] != 0 {
		t.Errorf("healthy fallback reported failing")
	}
}

func TestPermanentRepliesNotRetried(t *testing.T) {
	for _, tc := range []struct {
		fault fault
		want  string
	}{
		{faultMail550, "550"},
		{faultData554, "554"},
	} {
		t.Run(fmt.Sprint(tc.want), func(t *testing.T) {
			bad := newFakeMTA(t, "bad", tc.fault, nil)
			good := newFakeMTA(t, "good", faultNone, nil)
			tb := table(t, config.Pool{Name: "mx", Fallback: "fb", Backends: backends(bad.addr())},
				config.Pool{Name: "fb", Backends: backends(good.addr())})
			f := startFront(t, tb, config.Frontend{}, nil)
			_, err := send(f.addr, "a@example.test", []string{"b@example.test"}, body8, nil)
			var se *smtp.SMTPError
			if !errors.As(err, &se) || fmt.Sprint(se.Code) != tc.want {
				t.Fatalf("client got %v, want %s", err, tc.want)
			}
			if n := len(good.messages()); n != 0 {
				t.Errorf("a 5xx was retried: the other backend got %d messages", n)
			}
		})
	}
	// A recipient's 550 is relayed; the transaction goes on with the others.
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	rc := dialRaw(t, f.addr)
	rc.expect(t, "220")
	rc.write("EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<unknown@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	rc.expect(t, "250")
	rc.expect(t, "250")
	rc.expect(t, "550 5.1.1 no such user")
	rc.expect(t, "250")
	rc.expect(t, "354")
	rc.write("Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
	rc.expect(t, "250 2.0.0 Ok: queued as A")
	rc.expect(t, "221")
	if msgs := m.messages(); len(msgs) != 1 || len(msgs[0].rcpts) != 1 {
		t.Errorf("messages %+v", msgs)
	}
}

func TestNoBackendTempfails(t *testing.T) {
	busy := newRawMTA(t, map[string]string{"": "421 4.3.2 busy\r\n"})
	tb := table(t, config.Pool{Name: "mx", Backends: backends(mxtest.RefusedAddr(t), busy.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	// The backend session opens at the first recipient (issue 11 item 6): MAIL costs none.
	oneRcptThenQuit(t, f, "b@example.test", "451 4.3.2")
	if r := f.log.Records("txn"); len(r) != 1 || r[0]["outcome"] != "no backend" {
		t.Errorf("log %v", r)
	}
}

func TestRcpt421FailsOver(t *testing.T) {
	// The first backend closes at RCPT (421): the envelope moves to the next one.
	closer := newRawMTA(t, map[string]string{"": "220 closer ESMTP\r\n", "EHLO": "250-closer\r\n250 8BITMIME\r\n", "RCPT": "421 4.3.2 going down\r\n"})
	good := newFakeMTA(t, "good", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Fallback: "fb", Backends: backends(closer.addr())},
		config.Pool{Name: "fb", Backends: backends(good.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	if _, err := send(f.addr, "a@example.test", []string{"b@example.test", "c@example.test"}, body8, nil); err != nil {
		t.Fatal(err)
	}
	if msgs := good.messages(); len(msgs) != 1 || len(msgs[0].rcpts) != 2 {
		t.Fatalf("messages %+v", msgs)
	}
}

func TestXCLIENT(t *testing.T) {
	x := newRawMTA(t, map[string]string{
		"":        "220 pf ESMTP\r\n",
		"EHLO":    "250-pf\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n250 8BITMIME\r\n",
		"XCLIENT": "220 pf ESMTP again\r\n",
		"DATA":    "354 go\r\n",
		".":       "250 2.0.0 Ok: queued as 4ABCD\r\n",
	})
	tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9)}}
	c, err := d.Dial("tcp", f.addr)
	if err != nil {
		t.Skipf("cannot bind 127.0.0.9: %v", err)
	}
	sc := smtp.NewClient(c)
	defer sc.Close()
	if err := sc.SendMail("a@example.test", []string{"b@example.test"}, bytes.NewReader(body8)); err != nil {
		t.Fatal(err)
	}
	got := x.received()
	var xl string
	for _, l := range got {
		if strings.HasPrefix(l, "XCLIENT ") {
			xl = l
		}
	}
	port := c.LocalAddr().(*net.TCPAddr).Port
	for _, want := range []string{"ADDR=127.0.0.9", fmt.Sprintf("PORT=%d", port), "NAME=[UNAVAILABLE]", "HELO=localhost", "PROTO=ESMTP", "DESTADDR=127.0.0.1"} {
		if !strings.Contains(xl, want) {
			t.Errorf("XCLIENT line %q lacks %s", xl, want)
		}
	}
	if strings.Contains(xl, "LOGIN=") {
		t.Errorf("XCLIENT line %q sends LOGIN", xl)
	}
	// EHLO, XCLIENT, EHLO with the client's name, then the transaction.
	if len(got) < 4 || !strings.HasPrefix(got[0], "EHLO mxlb.test") || !strings.HasPrefix(got[1], "XCLIENT") || got[2] != "EHLO localhost" || !strings.HasPrefix(got[3], "MAIL FROM:<a@example.test>") {
		t.Errorf("backend dialogue %q", got)
	}
	// A backend that does not offer XCLIENT is skipped, not fed the proxy's identity.
	plain := newFakeMTA(t, "plain", faultNone, nil)
	tb.SetSpec(config.Spec{Pools: []config.Pool{{Name: "mx", ProxyProtocol: "xclient", Backends: backends(plain.addr())}}})
	tb.ObserveHealth(pool.Key{Pool: "mx", Addr: plain.addr()}, true, "", time.Now())
	if _, err := send(f.addr, "a@example.test", []string{"b@example.test"}, body8, nil); err == nil {
		t.Errorf("sent through a backend without XCLIENT")
	}
	if n := len(plain.messages()); n != 0 {
		t.Errorf("plain backend got %d", n)
	}
}

func TestProxyV2Identity(t *testing.T) {
	m := newFakeMTA(t, "pp", faultNone, func(l net.Listener) net.Listener { return &proxyproto.Listener{Listener: l} })
	tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "none", Backends: []config.Backend{{Address: m.addr(), Identity: "v2"}}})
	f := startFront(t, tb, config.Frontend{}, nil)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9)}}
	c, err := d.Dial("tcp", f.addr)
	if err != nil {
		t.Skipf("cannot bind 127.0.0.9: %v", err)
	}
	sc := smtp.NewClient(c)
	defer sc.Close()
	if err := sc.SendMail("a@example.test", []string{"b@example.test"}, bytes.NewReader(body8)); err != nil {
		t.Fatal(err)
	}
	msgs := m.messages()
	if len(msgs) != 1 || msgs[0].addr != c.LocalAddr().String() {
		t.Fatalf("backend saw %+v, want client %s", msgs, c.LocalAddr())
	}
}

func TestPipelining(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	rc := dialRaw(t, f.addr)
	rc.expect(t, "220")
	// Two transactions, each sent in one write (RFC 2920), the second after RSET.
	rc.write("EHLO c.test\r\n")
	for !strings.HasPrefix(rc.reply(t), "250 ") {
	}
	for i := 0; i < 2; i++ {
		rc.write("RSET\r\nMAIL FROM:<a@example.test> BODY=8BITMIME\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nRCPT TO:<d@example.test>\r\nDATA\r\n")
		for _, want := range []string{"250", "250", "250", "250", "250", "354"} {
			rc.expect(t, want)
		}
		rc.write(fmt.Sprintf("Subject: %d\r\n\r\n..dot\r\n.\r\n", i))
		rc.expect(t, "250 2.0.0 Ok: queued as A")
	}
	rc.write("QUIT\r\n")
	rc.expect(t, "221")
	msgs := m.messages()
	if len(msgs) != 2 || len(msgs[1].rcpts) != 3 || string(msgs[1].body) != "Subject: 1\r\n\r\n.dot\r\n" {
		t.Fatalf("messages %+v", msgs)
	}
	if n := len(f.log.Records("txn")); n != 2 {
		t.Errorf("%d txn lines, want 2", n)
	}
}

func TestLimits(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	fe := config.Frontend{Mode: "smtp", MaxRecipients: 2, MaxMessageSize: 4096, MaxLineLength: 1000, HoldLimit: 2048,
		MaxConnPerIP: 3, RatePerIP: 6}
	f := startFront(t, tb, fe, nil)

	rc := dialRaw(t, f.addr)
	rc.expect(t, "220")
	rc.write("EHLO c.test\r\n")
	var ehlo []string
	for {
		line, _ := rc.r.ReadString('\n')
		ehlo = append(ehlo, strings.TrimSpace(line[4:]))
		if line[3] == ' ' {
			break
		}
	}
	for _, want := range []string{"SIZE 4096", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN", "CHUNKING", "LIMITS RCPTMAX=2"} {
		if !slices.Contains(ehlo, want) {
			t.Errorf("EHLO %q lacks %s", ehlo, want)
		}
	}
	rc.write("MAIL FROM:<a@example.test> SIZE=5000\r\n")
	rc.expect(t, "552 5.3.4")
	rc.write("MAIL FROM:<a@example.test>\r\nRCPT TO:<1@example.test>\r\nRCPT TO:<2@example.test>\r\nRCPT TO:<3@example.test>\r\n")
	rc.expect(t, "250")
	rc.expect(t, "250")
	rc.expect(t, "250")
	rc.expect(t, "452 4.5.3")
	rc.write("DATA\r\n")
	rc.expect(t, "354")
	rc.write(strings.Repeat("x", 990) + "\r\n" + strings.Repeat("y", 990) + "\r\n" + strings.Repeat("z", 990) + "\r\n.\r\n")
	rc.expect(t, "451 4.3.1") // above hold_limit, below max_message_size
	rc.write("MAIL FROM:<a@example.test>\r\nRCPT TO:<1@example.test>\r\nDATA\r\n")
	rc.expect(t, "250")
	rc.expect(t, "250")
	rc.expect(t, "354")
	rc.write(strings.Repeat(strings.Repeat("x", 900)+"\r\n", 5) + ".\r\n")
	rc.expect(t, "552 5.3.4") // above max_message_size
	// A command line above max_line_length is refused; the session goes on (as Postfix).
	rc.write("NOOP " + strings.Repeat("x", 1200) + "\r\nNOOP\r\n")
	rc.expect(t, "500 5.5.2")
	rc.expect(t, "250")
	rc.write("QUIT\r\n")
	rc.expect(t, "221")
	if n := len(m.messages()); n != 0 {
		t.Errorf("backend got %d messages", n)
	}

	waitIdle(t, f.s)
	// Sessions per address: the 4th concurrent one gets 421 4.7.0 before any banner.
	var open []*rawClient
	for i := 0; i < 3; i++ {
		c := dialRaw(t, f.addr)
		c.expect(t, "220")
		open = append(open, c)
	}
	c := dialRaw(t, f.addr)
	c.expect(t, "421 4.7.0 mxlb.test Too many connections from your address")
	for _, c := range open {
		c.write("QUIT\r\n")
		c.expect(t, "221")
	}
	waitIdle(t, f.s)

	// Rate: 6 per minute; 4 were admitted above (the refused one took no token).
	dialRaw(t, f.addr).expect(t, "220")
	dialRaw(t, f.addr).expect(t, "220")
	dialRaw(t, f.addr).expect(t, "421 4.7.0 mxlb.test Too many connections per minute")
}

func TestSlowClientsCutWithoutStarvingOthers(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	fe := config.Frontend{Mode: "smtp", CommandTimeout: config.Duration(400 * time.Millisecond), DataTimeout: config.Duration(600 * time.Millisecond)}
	f := startFront(t, tb, fe, nil)

	var wg sync.WaitGroup
	cut := make(chan string, 40)
	// 20 slowloris clients: a byte every 100 ms of a command line, or of the message.
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.Dial("tcp", f.addr)
			if err != nil {
				cut <- err.Error()
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 4096)
			c.Read(buf)
			start := time.Now()
			if i%2 == 1 {
				fmt.Fprintf(c, "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
			}
			var got []byte
			for time.Since(start) < 5*time.Second {
				if _, err := c.Write([]byte("x")); err != nil {
					break
				}
				c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil && !errors.Is(err, timeoutErr(err)) {
					break
				}
			}
			cut <- fmt.Sprintf("%v %q", time.Since(start).Round(100*time.Millisecond), lastLine(got))
		}(i)
	}
	// Meanwhile ordinary clients are served at once.
	okStart := time.Now()
	for i := 0; i < 20; i++ {
		if _, err := send(f.addr, "a@example.test", []string{"b@example.test"}, body8, nil); err != nil {
			t.Fatalf("ordinary client %d: %v", i, err)
		}
	}
	if d := time.Since(okStart); d > 3*time.Second {
		t.Errorf("20 ordinary messages took %v next to slow clients", d)
	}
	wg.Wait()
	close(cut)
	for s := range cut {
		if !strings.Contains(s, "421 4.4.2") {
			t.Errorf("slow client: %s", s)
		}
	}
}

func timeoutErr(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return errors.New("not a timeout")
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimRight(string(b), "\r\n"), "\r\n")
	return lines[len(lines)-1]
}

func TestShutdownDrainsTheSMTPWay(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)

	idle := dialRaw(t, f.addr)
	idle.expect(t, "220")
	idle.write("EHLO c.test\r\n")
	for !strings.HasPrefix(idle.reply(t), "250 ") {
	}
	busy := dialRaw(t, f.addr)
	busy.expect(t, "220")
	busy.write("EHLO c.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n")
	for !strings.HasPrefix(busy.reply(t), "250 ") {
	}
	busy.expect(t, "250")
	busy.expect(t, "250")

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- f.s.Shutdown(ctx)
	}()
	idle.expect(t, "421 4.3.2")
	if !idle.closed(2 * time.Second) {
		t.Errorf("idle session not closed")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a transaction open", err)
	case <-time.After(200 * time.Millisecond):
	}
	// A new connection is not accepted.
	if c, err := net.DialTimeout("tcp", f.addr, time.Second); err == nil {
		c.SetReadDeadline(time.Now().Add(time.Second))
		b := make([]byte, 100)
		n, _ := c.Read(b)
		if strings.HasPrefix(string(b[:n]), "220") {
			t.Errorf("new connection greeted during shutdown")
		}
		c.Close()
	}
	busy.write("DATA\r\n")
	busy.expect(t, "354")
	busy.write("Subject: x\r\n\r\nhi\r\n.\r\n")
	busy.expect(t, "250 2.0.0 Ok: queued")
	busy.write("MAIL FROM:<a@example.test>\r\n")
	busy.expect(t, "421 4.3.2")
	if !busy.closed(2 * time.Second) {
		t.Errorf("session not closed after its transaction")
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if n := len(m.messages()); n != 1 {
		t.Errorf("backend got %d messages", n)
	}
}

// TestKillMidDataUnderLoad: backends that drop every 4th DATA (half of them after storing
// it, so the replay makes a duplicate) while 8 clients send. Every message the client got
// 250 for is at a backend at least once; none got 250 without a backend's 250.
func TestKillMidDataUnderLoad(t *testing.T) {
	var ms []*fakeMTA
	var addrs []string
	for i := 0; i < 4; i++ {
		m := newFakeMTA(t, fmt.Sprintf("m%d", i), faultNone, nil)
		m.dropEvery.Store(int32(3 + i))
		if i%2 == 0 {
			m.dropMode.Store(int32(faultDropInData))
		} else {
			m.dropMode.Store(int32(faultDropAfterStore))
		}
		ms = append(ms, m)
		addrs = append(addrs, m.addr())
	}
	tb := table(t, config.Pool{Name: "mx", Backends: backends(addrs...)})
	f := startFront(t, tb, config.Frontend{}, nil)
	const clients, per = 8, 50
	var accepted sync.Map
	var failed atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				id := fmt.Sprintf("<%d.%d@test>", c, i)
				body := []byte("Message-ID: " + id + "\r\n\r\n" + strings.Repeat("body line\r\n", 50))
				if _, err := send(f.addr, "a@example.test", []string{"b@example.test"}, body, nil); err != nil {
					t.Logf("client %d message %d: %v", c, i, err)
					failed.Add(1)
					continue
				}
				accepted.Store(id, true)
			}
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	seen := map[string]int{}
	drops := 0
	for _, m := range ms {
		drops += int(m.datas.Load())
		for _, msg := range m.messages() {
			id := strings.TrimPrefix(strings.SplitN(string(msg.body), "\r\n", 2)[0], "Message-ID: ")
			seen[id]++
		}
	}
	n, dups := 0, 0
	accepted.Range(func(k, _ any) bool {
		n++
		if seen[k.(string)] == 0 {
			t.Errorf("message %s got 250 but is at no backend", k)
		}
		if seen[k.(string)] > 1 {
			dups++
		}
		return true
	})
	t.Logf("%d messages 250'd in %v (%.0f/s), %d tempfailed to the client, %d DATA attempts at backends, %d duplicates",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), failed.Load(), drops, dups)
	if n+int(failed.Load()) != clients*per {
		t.Errorf("accounted %d+%d of %d", n, failed.Load(), clients*per)
	}
	if n < clients*per*9/10 {
		t.Errorf("only %d of %d accepted: retries do not work", n, clients*per)
	}
}

func waitIdle(t *testing.T, s *Server) {
	t.Helper()
	mxtest.WaitFor(t, 5*time.Second, "every session closed", func() bool { return s.Active() == 0 })
}

// TestSessionKeepsBackendWhileUsable: transactions of one client session share one backend
// connection while that backend stays usable; a drained backend gets no new transaction.
func TestSessionKeepsBackendWhileUsable(t *testing.T) {
	a, b := newFakeMTA(t, "a", faultNone, nil), newFakeMTA(t, "b", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(a.addr(), b.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	c, err := smtp.Dial(f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	sendOn := func() {
		t.Helper()
		if err := c.SendMail("x@example.test", []string{"y@example.test"}, strings.NewReader("Subject: k\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		sendOn()
	}
	if n := a.conns.Load() + b.conns.Load(); n != 1 {
		t.Fatalf("3 transactions in one session opened %d backend connections, want 1", n)
	}
	first, other := a, b
	if b.conns.Load() == 1 {
		first, other = b, a
	}
	// Drain the backend in use: the next transaction goes elsewhere.
	spec := tb.Spec()
	for i := range spec.Pools[0].Backends {
		if spec.Pools[0].Backends[i].Address == first.addr() {
			spec.Pools[0].Backends[i].State = "drain"
		}
	}
	tb.SetSpec(spec)
	sendOn()
	if len(other.messages()) != 1 || len(first.messages()) != 3 {
		t.Fatalf("after drain: %d at the drained backend, %d at the other; want 3 and 1", len(first.messages()), len(other.messages()))
	}
	c.Quit()
}
