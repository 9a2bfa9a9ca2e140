package l7

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mxlb/mxlb/config"
)

// writeCert writes a self-signed certificate with the given serial to dir.
func writeCert(t *testing.T, dir string, serial int64) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "mxlb.test"},
		DNSNames: []string{"mxlb.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

func TestSTARTTLSAndReload(t *testing.T) {
	dir := t.TempDir()
	cf, kf := writeCert(t, dir, 1)
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	clk := &fakeClock{now: time.Now()}
	f := startFront(t, tb, config.Frontend{Mode: "smtp", TLS: &config.TLS{CertFile: cf, KeyFile: kf}}, func(o *Options) { o.Clock = clk })

	sendTLS := func() *big.Int {
		t.Helper()
		c, err := smtp.DialStartTLS(f.addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a test certificate
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.SendMail("a@example.test", []string{"b@example.test"}, bytes.NewReader(body8)); err != nil {
			t.Fatal(err)
		}
		st, ok := c.TLSConnectionState()
		if !ok || len(st.PeerCertificates) == 0 {
			t.Fatal("no TLS")
		}
		return st.PeerCertificates[0].SerialNumber
	}
	if s := sendTLS(); s.Int64() != 1 {
		t.Errorf("serial %v", s)
	}
	msgs := m.messages()
	if len(msgs) != 1 || hash(msgs[0].body) != hash(body8) {
		t.Fatalf("messages %d", len(msgs))
	}
	if r := f.log.Records("txn"); len(r) != 1 || r[0]["tls"] != true {
		t.Errorf("log %v", r)
	}
	// A new certificate on disk is served after Reload (and, on its own, within a second).
	writeCert(t, dir, 2)
	if err := f.s.Reload(); err != nil {
		t.Fatal(err)
	}
	if s := sendTLS(); s.Int64() != 2 {
		t.Errorf("after Reload: serial %v, want 2", s)
	}
	writeCert(t, dir, 3)
	if s := sendTLS(); s.Int64() != 2 {
		t.Errorf("a file change within a second: serial %v, want 2 (checked at most once a second)", s)
	}
	clk.advance(reloadCheck)
	if s := sendTLS(); s.Int64() != 3 {
		t.Errorf("after a file change: serial %v, want 3", s)
	}
	// A broken file keeps the working certificate.
	os.WriteFile(cf, []byte("garbage"), 0o600)
	if err := f.s.Reload(); err == nil {
		t.Errorf("Reload of a broken certificate did not fail")
	}
	if s := sendTLS(); s.Int64() != 3 {
		t.Errorf("after a broken reload: serial %v, want 3", s)
	}
}
