package e2e

import (
	"fmt"
	"testing"
)

func TestExpCrossSite(t *testing.T) {
	needBrowser(t)
	fake := newFake(t)
	dir := t.TempDir()
	apiPort, pagePort := freePort(t), freePort(t)
	api := fmt.Sprintf("http://localhost:%d", apiPort)
	page := fmt.Sprintf("http://127.0.0.1:%d", pagePort)
	startCaddy(t, dir,
		siteBlock(dir, apiPort, chatkitBlock(fake, "wf_e2e_xs", "allow_origins "+page)+"\n\trespond 404"),
		siteBlock(dir, pagePort, "root * "+testdataRoot(t)+"\n\tfile_server"),
	)
	tb := newTab(t)
	r := tb.crossResult(t, page+"/cross-origin.html?api="+api)
	t.Logf("start %+v refresh %+v", r.Start, r.Refresh)
	for _, s := range fake.Sessions() {
		t.Logf("user %s", s.User)
	}
	t.Logf("cookies %+v", findCookie(tb.cookies(t, api+"/"), "chatkit_uid"))
}
