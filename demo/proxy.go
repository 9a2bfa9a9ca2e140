package demo

import (
	"bufio"
	"errors"
	"net"
	"sync"

	"github.com/pires/go-proxyproto"
)

// proxyListener accepts connections that may open with a PROXY header (v1 or v2), as the
// demo's pools send: a connection's RemoteAddr is then the header's client. The header is
// looked for at the first read, not before the banner: the server speaks first, and a
// client without a header (a swaks straight at the MTA) waits for it. go-proxyproto's own
// listener reads the header before the first write, so such a client got no banner.
type proxyListener struct{ net.Listener }

func (l proxyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &proxyConn{Conn: c, br: bufio.NewReader(c)}, nil
}

type proxyConn struct {
	net.Conn
	br     *bufio.Reader
	once   sync.Once
	err    error
	mu     sync.Mutex
	remote net.Addr // the header's client; nil: the peer itself
}

func (c *proxyConn) Read(b []byte) (int, error) {
	c.once.Do(func() {
		h, err := proxyproto.Read(c.br)
		switch {
		case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		case err != nil:
			c.err = err // a broken header: the session ends, as at Postfix
		case h.Command.IsProxy():
			c.mu.Lock()
			c.remote = h.SourceAddr
			c.mu.Unlock()
		}
	})
	if c.err != nil {
		return 0, c.err
	}
	return c.br.Read(b)
}

func (c *proxyConn) RemoteAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.remote != nil {
		return c.remote
	}
	return c.Conn.RemoteAddr()
}
