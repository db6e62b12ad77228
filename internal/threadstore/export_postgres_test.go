package threadstore

// PGSweepLock is the advisory lock the retention sweep takes, for tests that
// hold it from another session.
var PGSweepLock = [2]int32{pgLockSpace, pgLockSweep}
