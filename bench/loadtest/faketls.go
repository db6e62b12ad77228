package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// fakeTLS is the fake's own certificate authority: the fake serves HTTPS
// with HTTP/2 on a certificate for 127.0.0.1 that is its own CA, Caddy
// trusts it through SSL_CERT_FILE (as a system root) and the load
// generator through RootCAs. That is how the module reaches OpenAI: TLS, and
// HTTP/2 negotiated by ALPN, many streams on one connection.
type fakeTLS struct {
	certFile, keyFile string
	roots             *x509.CertPool
}

func newFakeTLS(dir string) (*fakeTLS, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: "chatkit bench fake upstream"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	f := &fakeTLS{certFile: filepath.Join(dir, "fake-cert.pem"), keyFile: filepath.Join(dir, "fake-key.pem"), roots: x509.NewCertPool()}
	if err := os.WriteFile(f.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(f.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	f.roots.AddCert(cert)
	return f, nil
}

// transport trusts the fake; HTTP/2 as the module's own transport does.
func (f *fakeTLS) transport() *http.Transport {
	return &http.Transport{
		TLSClientConfig:    &tls.Config{RootCAs: f.roots},
		ForceAttemptHTTP2:  true,
		DisableCompression: true,
	}
}
