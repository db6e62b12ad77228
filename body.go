package chatkit

import (
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds on the bodies the module reads itself. On protected paths the body
// is read before anything is charged (its ChatKit `type` decides the
// charge), and Caddy has no deadline for a whole body by default (only one
// for a read that stalls a full minute), so without them a client that sends
// headers and then trickles or stalls pins memory for free. With them one
// client has at most maxPendingPerClient bodies being read, each of at most
// max_body (4 MiB at the default 1 MiB), for at most bodyReadTimeout; and
// all clients together at most maxPendingBytes.
const (
	// bodyReadTimeout is how long a body the module reads may take to
	// arrive, counted from the start of the request: a browser sends a
	// ChatKit request in one go, and even a 1 MiB body needs only ~1 Mbit/s.
	bodyReadTimeout = 10 * time.Second
	// maxPendingPerClient bounds one client's (one rate-limit key's)
	// requests whose body is still arriving. A page sends one ChatKit
	// request at a time and a few attachment uploads at most, each read in
	// milliseconds, so a browser (even a few behind one NAT) stays below it.
	maxPendingPerClient = 4
	// maxPendingBytes bounds what all those reads may buffer together: each
	// reserves what it can hold (its Content-Length, or max_body when
	// chunked, capped at max_body). At the default 1 MiB that is 64
	// stalled bodies at most, which takes 16 clients; real ChatKit
	// requests are a few KiB, so thousands of them fit.
	maxPendingBytes = 64 << 20
	// firstBodyBuffer is the largest first allocation for a client's body:
	// the buffer grows as bytes arrive, never from what Content-Length
	// promises.
	firstBodyBuffer = 4 << 10
	// pendingRetryAfter is the wait suggested to a client refused for too
	// many pending bodies: a real browser's reads finish in milliseconds.
	pendingRetryAfter = time.Second
)

// pendingBodies bounds the protected requests whose body is still being
// read, per client and in total.
type pendingBodies struct {
	timeout atomic.Int64 // a time.Duration; tests shorten it

	mu           sync.Mutex
	perClient    map[bucketKey]int
	reserved     int64
	reads        int
	maxPerClient int
	maxBytes     int64
}

func newPendingBodies() *pendingBodies {
	p := &pendingBodies{perClient: make(map[bucketKey]int), maxPerClient: maxPendingPerClient, maxBytes: maxPendingBytes}
	p.timeout.Store(int64(bodyReadTimeout))
	return p
}

// readTimeout is how long after the start of a request its body may take.
func (p *pendingBodies) readTimeout() time.Duration {
	if p == nil {
		return bodyReadTimeout
	}
	return time.Duration(p.timeout.Load())
}

// enter takes a slot for one more read of up to size bytes from client,
// or says which bound refuses it. A read larger than the whole budget is
// let in when nothing else is pending, so a lone one is never refused.
func (p *pendingBodies) enter(client bucketKey, size int64) (refusal answer, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.perClient[client] >= p.maxPerClient {
		return answerTooManyPending, false
	}
	if p.reads > 0 && p.reserved+size > p.maxBytes {
		return answerServerBusy, false
	}
	p.perClient[client]++
	p.reserved += size
	p.reads++
	return refusal, true
}

// leave gives back a slot taken with the same client and size.
func (p *pendingBodies) leave(client bucketKey, size int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.perClient[client]; n > 1 {
		p.perClient[client] = n - 1
	} else {
		delete(p.perClient, client)
	}
	p.reserved -= size
	p.reads--
}

// pending reports how many reads hold a slot (for tests).
func (p *pendingBodies) pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reads
}

// holdPending takes the slot a read of up to limit bytes of x's body needs
// (its Content-Length when smaller), answering the refusal itself when the
// bounds say no; release gives the slot back.
func (h *Handler) holdPending(x *exchange, limit int64) (release func(), ok bool) {
	client, size := h.limiter.clientKey(x.r, x.repl), limit
	if x.r.ContentLength >= 0 {
		size = min(x.r.ContentLength, size)
	}
	p := h.protected.pending
	if refusal, ok := p.enter(client, size); !ok {
		x.refuseAndClose(refusal, pendingRetryAfter)
		return nil, false
	}
	return func() { p.leave(client, size) }, true
}

// refuseAndClose answers a request whose body the module will not read and
// makes the answer the connection's last: an unread body left open keeps the
// connection, and what it holds, alive.
func (x *exchange) refuseAndClose(a answer, wait time.Duration) {
	x.w.Header().Set("Connection", "close")
	if wait > 0 {
		x.refuseAfter(a, wait)
		return
	}
	x.refuse(a)
}

// bodyDeadline bounds the module's own reads of the request body to
// timeout after the request started (never later than the server's own
// read_body timeout), and returns the function that ends the bound once
// the module has read what it needs. Protocols without read deadlines
// (HTTP/3) are read without one; their flow control bounds what a stalled
// stream holds.
func bodyDeadline(x *exchange, timeout time.Duration) (undo func(ended bool)) {
	rc := http.NewResponseController(x.w)
	var own time.Time // the server's own deadline; zero for none
	if srv, ok := x.r.Context().Value(http.ServerContextKey).(*http.Server); ok && srv.ReadTimeout > 0 {
		own = x.started.Add(srv.ReadTimeout)
	}
	deadline := x.started.Add(timeout)
	if !own.IsZero() && own.Before(deadline) {
		deadline = own
	}
	if rc.SetReadDeadline(deadline) != nil {
		return func(bool) {}
	}
	return func(ended bool) {
		// A body read to its end is left alone: net/http and Caddy's body
		// reader clear the deadline at the end for the server's background
		// read (which notices a browser that leaves), and any deadline set
		// after that would cancel the request when it passed. The rest of
		// a body the backend still reads gets the server's own deadline
		// back, so the module's bound does not cut it.
		if !ended {
			_ = rc.SetReadDeadline(own)
		}
	}
}

// readRequestBody is the body-read step of the minting and protected
// paths: at most limit bytes, arriving within the read timeout. It answers
// the request itself (413, 408 or 400) and reports false when it cannot go
// on.
func (h *Handler) readRequestBody(x *exchange, limit int64) ([]byte, bool) {
	return h.readRequestBodyWithin(x, limit, h.protected.pending.readTimeout())
}

// readRequestBodyWithin is readRequestBody with its own read timeout (an
// attachment upload is larger than a ChatKit request).
func (h *Handler) readRequestBodyWithin(x *exchange, limit int64, timeout time.Duration) ([]byte, bool) {
	r := x.r
	body, tooLarge, err := []byte(nil), r.ContentLength > limit, error(nil)
	if !tooLarge && r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		undo := bodyDeadline(x, timeout)
		body, tooLarge, err = readBody(r, limit)
		undo(err == nil && !tooLarge)
	}
	switch {
	case tooLarge:
		x.refuse(bodyTooLarge(limit))
	case errors.Is(err, os.ErrDeadlineExceeded):
		x.refuseAndClose(answerBodyTimeout, 0)
	case err != nil:
		x.refuse(answerUnreadableBody)
	default:
		return body, true
	}
	return nil, false
}

// bodyTooLarge is the answer to a body over limit bytes.
func bodyTooLarge(limit int64) answer {
	return answerTooLarge.withMessage("request body exceeds " + strconv.FormatInt(limit, 10) + " bytes")
}

// readBody reads at most limit bytes of a client's body; tooLarge reports
// a longer body without buffering more than limit+1 bytes. The buffer
// starts small and grows as bytes arrive: a Content-Length only caps it.
func readBody(r *http.Request, limit int64) (body []byte, tooLarge bool, err error) {
	if r.ContentLength > limit {
		return nil, true, nil
	}
	if r.Body == nil || r.ContentLength == 0 {
		return nil, false, nil
	}
	if r.ContentLength > 0 {
		// Room for the EOF too, so a whole body needs no last grow.
		body, err = readGrowing(r.Body, min(firstBodyBuffer, r.ContentLength+1), r.ContentLength+1, true)
	} else {
		// One past the limit tells "at" from "over".
		body, err = readGrowing(r.Body, min(firstBodyBuffer, limit+1), limit+1, false)
	}
	if int64(len(body)) > limit {
		return nil, true, nil
	}
	return body, false, err
}

// readCapped reads a trusted sender's body (OpenAI's answers) to its end,
// at most limit bytes. A declared length within the limit is read into a
// buffer of exactly that size (plus the byte that meets the EOF); without
// one the buffer grows by half as bytes arrive.
func readCapped(r io.Reader, announced, limit int64) ([]byte, error) {
	if announced >= 0 {
		return readGrowing(r, min(announced+1, limit), limit, false)
	}
	return readGrowing(r, min(firstBodyBuffer, limit), limit, false)
}

// readGrowing reads r to its end, or until limit bytes, into a buffer that
// starts at first bytes and grows when full, never past limit. When the
// limit is where the body ends (a client's Content-Length) the buffer
// doubles: it stays within twice what has arrived and ends at the limit
// anyway. Otherwise it grows by half (at least firstBodyBuffer), so the
// final buffer is at most 1.5 times what it holds, where
// bytes.Buffer.ReadFrom doubles and keeps 512 bytes spare.
func readGrowing(r io.Reader, first, limit int64, limitIsEnd bool) ([]byte, error) {
	buf := make([]byte, 0, max(first, 1))
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= limit {
				return buf, nil
			}
			step := max(int64(cap(buf))/2, firstBodyBuffer)
			if limitIsEnd {
				step = int64(cap(buf))
			}
			grown := make([]byte, len(buf), min(int64(cap(buf))+step, limit))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// spentBody hands the inspected bytes to the next handler once and lets go
// of them when they have been read, so a client that then stops reading the
// answer holds no copy of its request. Close leaves them alone: a transport
// may close a request body from another goroutine while it is being read.
type spentBody struct{ rest []byte }

func (b *spentBody) Read(p []byte) (int, error) {
	if len(b.rest) == 0 {
		b.rest = nil
		return 0, io.EOF
	}
	n := copy(p, b.rest)
	b.rest = b.rest[n:]
	if len(b.rest) == 0 {
		b.rest = nil
	}
	return n, nil
}

func (*spentBody) Close() error { return nil }
