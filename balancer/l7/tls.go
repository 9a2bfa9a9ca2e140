package l7

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/mxlb/mxlb/clock"
)

// certReloader serves a certificate read from files, re-read when they change (checked
// at most once a second, on a handshake) or on Reload. A failed re-read keeps the
// certificate that works and logs why.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	clock             clock.Clock

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string // modification times and sizes of both files at the last load
	checked time.Time
}

// reloadCheck is how often, at most, a handshake looks at the files.
const reloadCheck = time.Second

func newCertReloader(certFile, keyFile string, log *slog.Logger, clk clock.Clock) *certReloader {
	return &certReloader{certFile: certFile, keyFile: keyFile, log: log, clock: clk}
}

func fileStamp(paths ...string) string {
	s := ""
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			s += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
		} else {
			s += "missing;"
		}
	}
	return s
}

// load reads both files now.
func (r *certReloader) load() error {
	stamp := fileStamp(r.certFile, r.keyFile)
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checked = r.clock.Now()
	if err != nil {
		return fmt.Errorf("l7: tls certificate %s: %w", r.certFile, err)
	}
	r.cert, r.stamp = &c, stamp
	return nil
}

// ensure loads the certificate unless it is loaded.
func (r *certReloader) ensure() error {
	r.mu.Lock()
	loaded := r.cert != nil
	r.mu.Unlock()
	if loaded {
		return nil
	}
	return r.load()
}

func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	now := r.clock.Now()
	check := now.Sub(r.checked) >= reloadCheck
	if check {
		r.checked = now
	}
	stamp := r.stamp
	r.mu.Unlock()
	if check && fileStamp(r.certFile, r.keyFile) != stamp {
		if err := r.load(); err != nil {
			r.log.Error("tls certificate not reloaded; keeping the previous one", "err", err)
		} else {
			r.log.Info("tls certificate reloaded", "cert_file", r.certFile)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert == nil {
		return nil, fmt.Errorf("l7: no certificate loaded from %s", r.certFile)
	}
	return r.cert, nil
}
