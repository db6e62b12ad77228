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
// charge), and Caddy has no body read timeout by default, so without them a
// client that sends headers and then stalls pins memory for free. With them
// one client holds at most maxPendingPerClient reads of at most max_body
// each (4 MiB at the default 1 MiB), for at most bodyReadTimeout, and the
// whole server at most maxPending of them.
const (
	// bodyReadTimeout is how long a body the module reads may take to
	// arrive, counted from the start of the request: a browser sends a
	// ChatKit request in one go, and even a 1 MiB body needs only ~1 Mbit/s.
	bodyReadTimeout = 10 * time.Second
	// maxPendingPerClient bounds one client's (one rate-limit key's)
	// protected requests whose body is still arriving. A page sends one
	// ChatKit request at a time and a few attachment uploads at most; each
	// read takes milliseconds for a real browser, so 4 is never reached by one.
	maxPendingPerClient = 4
	// maxPending bounds them for the whole handler: at 1 MiB each, at most
	// 256 MiB of body buffer, and only if 64 clients each send 4 MiB within
	// the timeout.
	maxPending = 256
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
	total        int
	maxPerClient int
	maxTotal     int
}

func newPendingBodies() *pendingBodies {
	p := &pendingBodies{perClient: make(map[bucketKey]int), maxPerClient: maxPendingPerClient, maxTotal: maxPending}
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

// enter takes a slot for one more read from client, or says which bound
// refuses it.
func (p *pendingBodies) enter(client bucketKey) (answer, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.perClient[client] >= p.maxPerClient {
		return answerTooManyPending, false
	}
	if p.total >= p.maxTotal {
		return answerServerBusy, false
	}
	p.perClient[client]++
	p.total++
	return answer{}, true
}

// leave gives a slot back.
func (p *pendingBodies) leave(client bucketKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.perClient[client]; n > 1 {
		p.perClient[client] = n - 1
	} else {
		delete(p.perClient, client)
	}
	p.total--
}

// pending reports how many reads hold a slot (for tests and the harness).
func (p *pendingBodies) pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
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
	r := x.r
	if r.ContentLength > limit {
		x.refuse(answerTooLarge.withMessage("request body exceeds " + strconv.FormatInt(limit, 10) + " bytes"))
		return nil, false
	}
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, true
	}
	undo := bodyDeadline(x, h.protected.pending.readTimeout())
	body, tooLarge, err := readBody(r, limit)
	undo(err == nil && !tooLarge)
	switch {
	case tooLarge:
		x.refuse(answerTooLarge.withMessage("request body exceeds " + strconv.FormatInt(limit, 10) + " bytes"))
	case errors.Is(err, os.ErrDeadlineExceeded):
		x.refuseAndClose(answerBodyTimeout, 0)
	case err != nil:
		x.refuse(answerUnreadableBody)
	default:
		return body, true
	}
	return nil, false
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
	ceiling := limit + 1 // one past the limit tells "at" from "over"
	if r.ContentLength >= 0 {
		ceiling = r.ContentLength + 1 // room for the EOF, so an exact body needs no grow
	}
	body, err = readGrowing(r.Body, min(firstBodyBuffer, ceiling), ceiling)
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
	first := int64(firstBodyBuffer)
	if announced >= 0 {
		first = announced + 1
	}
	return readGrowing(r, min(first, limit), limit)
}

// readGrowing reads r to its end, or until limit bytes, into a buffer that
// starts at first bytes and grows by half (at least firstBodyBuffer) when
// full, never past limit. The final buffer is at most 1.5 times what it
// holds, where bytes.Buffer.ReadFrom doubles and keeps 512 bytes spare.
func readGrowing(r io.Reader, first, limit int64) ([]byte, error) {
	buf := make([]byte, 0, max(first, 1))
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= limit {
				return buf, nil
			}
			next := min(int64(cap(buf))+max(int64(cap(buf))/2, firstBodyBuffer), limit)
			grown := make([]byte, len(buf), next)
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
