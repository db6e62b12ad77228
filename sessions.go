package chatkit

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"go.uber.org/zap"
)

// maxRegisteredSessions bounds the revoke registry. Entries expire with
// their sessions (10 minutes at most), so this is far above what a site
// mints in that time under its own rate limits.
const maxRegisteredSessions = 200_000

// secretDigest identifies a client secret without keeping it.
type secretDigest [sha256.Size]byte

func digestSecret(secret string) secretDigest { return sha256.Sum256([]byte(secret)) }

// issuedSession is what the registry keeps for a secret this server issued.
type issuedSession struct {
	sessionID string
	user      string
	expiresAt int64 // Unix seconds
}

// sessionRegistry remembers which session each issued secret belongs to,
// so a refresh can cancel the session it replaces. It stores a hash of the
// secret, never the secret.
type sessionRegistry struct {
	mu      sync.Mutex
	entries map[secretDigest]issuedSession
	limit   int
	// sweptAt throttles the full scan a full registry does, so a registry
	// full of live sessions does not rescan on every request.
	sweptAt int64
}

func newSessionRegistry(limit int) *sessionRegistry {
	return &sessionRegistry{entries: make(map[secretDigest]issuedSession), limit: limit}
}

func (s *sessionRegistry) remember(secret string, sess issuedSession, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.entries) >= s.limit && now.Unix() != s.sweptAt {
		s.sweptAt = now.Unix()
		s.forgetExpiredLocked(now.Unix())
	}
	if len(s.entries) >= s.limit {
		// Still full of live sessions: drop an arbitrary one. Losing an
		// entry only means that session is not cancelled early.
		for k := range s.entries {
			delete(s.entries, k)
			break
		}
	}
	s.entries[digestSecret(secret)] = sess
}

// take removes and returns the entry for secret when it belongs to user and
// has not expired.
func (s *sessionRegistry) take(secret, user string, now time.Time) (issuedSession, bool) {
	d := digestSecret(secret)
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.entries[d]
	if !ok || sess.user != user {
		return issuedSession{}, false
	}
	delete(s.entries, d)
	if sess.expiresAt <= now.Unix() {
		return issuedSession{}, false
	}
	return sess, true
}

func (s *sessionRegistry) forgetExpired(now time.Time) {
	s.mu.Lock()
	s.forgetExpiredLocked(now.Unix())
	s.mu.Unlock()
}

func (s *sessionRegistry) forgetExpiredLocked(now int64) {
	for k, v := range s.entries {
		if v.expiresAt <= now {
			delete(s.entries, k)
		}
	}
}

func (s *sessionRegistry) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// revokeInBackground cancels a replaced session upstream without making the
// refresh wait for it or fail because of it.
func (h *Handler) revokeInBackground(sess issuedSession, requestID string) {
	h.backgroundMu.Lock()
	defer h.backgroundMu.Unlock()
	if h.backgroundClosed {
		return // the config is being cleaned up; the session expires anyway
	}
	h.background.Add(1)
	go func() {
		defer h.background.Done()
		defer recoverInto(h.logger, "cancel replaced session")
		if h.beforeRevoke != nil {
			h.beforeRevoke()
		}
		ctx, cancel := context.WithTimeout(h.backgroundCtx, h.timeout)
		defer cancel()
		call, uerr := h.upstream.cancelSession(ctx, sess.sessionID)
		fields := []zap.Field{
			zap.String("request_id", requestID),
			zap.String("session_id", sess.sessionID),
			zap.Int("upstream_status", call.status),
			zap.String("openai_request_id", call.requestID),
			zap.Duration("upstream_duration", call.duration),
		}
		if uerr != nil {
			h.logger.Warn("could not cancel the replaced session", append(fields, zap.NamedError("cause", uerr))...)
			return
		}
		h.logger.Info("cancelled the replaced session", fields...)
	}()
}

// trackForRevocation cancels the session a refresh replaces (when this
// server issued the presented secret to the same user) and remembers the new
// one. With Redis configured the registry is shared by every instance.
func (h *Handler) trackForRevocation(x *exchange, presented string, session createdSession) {
	now := h.now()
	issued := issuedSession{sessionID: session.ID, user: x.user, expiresAt: session.ExpiresAt}
	local := h.limiter.zone.sessions
	ctx := x.r.Context()
	if b := h.limiter.redis; b != nil && b.usable(now) {
		if x.endpoint == endpointRefresh {
			if old, found, err := b.takeSession(ctx, presented, x.user, now); err == nil && found {
				h.revokeInBackground(old, x.requestID)
			}
		}
		if b.rememberSession(ctx, session.ClientSecret, issued, now) == nil {
			return
		}
	}
	if x.endpoint == endpointRefresh {
		if old, found := local.take(presented, x.user, now); found {
			h.revokeInBackground(old, x.requestID)
		}
	}
	local.remember(session.ClientSecret, issued, now)
}
