package chatkit

import (
	"fmt"
	"runtime/debug"

	"go.uber.org/zap"
)

// recoverInto is deferred at the top of every goroutine the module starts:
// a bug in background work (the janitor, a session cancel) is logged with
// its stack instead of taking the whole Caddy process down.
func recoverInto(logger *zap.Logger, what string) {
	if v := recover(); v != nil {
		logger.Error("chatkit: recovered from a panic in background work; please report this bug",
			zap.String("task", what), zap.String("panic", fmt.Sprint(v)), zap.ByteString("stack", debug.Stack()))
	}
}
