package chatkit

// TEMPORARY stand-in for the sharded bucket store; replaced shortly.

import (
	"crypto/sha256"
	"net/netip"
	"sync"
	"time"
)

type bucketKey [16]byte

func ipBucketKey(ip netip.Addr, ipv4Prefix, ipv6Prefix int) bucketKey {
	ip = ip.Unmap().WithZone("")
	var k bucketKey
	if ip.Is4() {
		p, _ := ip.Prefix(ipv4Prefix)
		a := p.Addr().As4()
		copy(k[12:], a[:])
		k[0] = 4
		return k
	}
	p, _ := ip.Prefix(ipv6Prefix)
	return bucketKey(p.Addr().As16())
}

func stringBucketKey(s string) bucketKey {
	sum := sha256.Sum256([]byte("k" + s))
	var k bucketKey
	copy(k[:], sum[:])
	k[0] = 0xff
	return k
}

type limit struct {
	burst    int
	interval time.Duration
}

type decision struct {
	allowed    bool
	remaining  int
	retryAfter time.Duration
	nextToken  time.Duration
}

type bucketStore struct {
	mu      sync.Mutex
	tat     map[bucketKey]int64
	maxKeys int
}

func newBucketStore(maxKeys int) *bucketStore {
	return &bucketStore{tat: make(map[bucketKey]int64), maxKeys: maxKeys}
}

func (s *bucketStore) allow(key bucketKey, l limit, now int64) decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, ok := s.tat[key]
	if !ok && len(s.tat) >= s.maxKeys {
		for k := range s.tat {
			delete(s.tat, k)
			break
		}
	}
	newTAT, allowed, wait := gcraStep(tat, l, now)
	if allowed {
		s.tat[key] = newTAT
		tat = newTAT
	}
	if tat < now {
		tat = now
	}
	t := int64(l.interval)
	used := (tat - now + t - 1) / t
	d := decision{allowed: allowed, remaining: max(l.burst-int(used), 0), retryAfter: wait}
	if rem := (tat - now) % t; tat > now {
		if rem == 0 {
			rem = t
		}
		d.nextToken = time.Duration(rem)
	}
	return d
}

func (s *bucketStore) setMaxKeys(n int) {
	s.mu.Lock()
	s.maxKeys = n
	s.mu.Unlock()
}

func (s *bucketStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tat)
}

func (s *bucketStore) sweep(now int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, tat := range s.tat {
		if tat <= now {
			delete(s.tat, k)
			n++
		}
	}
	return n
}
