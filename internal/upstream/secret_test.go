package upstream_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

const (
	leakRT     = "RT-sEcReT-refresh-9f8e7d6c"
	leakS1     = "CS-one-0a1b2c/+=&?"
	leakS2     = "CS-two-3d4e5f6a"
	leakAT     = "AT-access-7b8c9d0e"
	leakMarker = "BODY-MARKER-1234"
	leakID     = "client-1"
)

// echo is everything a request carried, as one string.
func echo(r *http.Request) string {
	body := r.PostForm.Encode()
	return fmt.Sprintf("url=%s authz=%s form=%s raw=%s %s %s", r.URL, r.Header.Get("Authorization"), body, leakRT, leakS1, leakS2)
}

// assertNoLeak fails if msg holds a secret, the form-encoded form of one,
// or text that appears only in a response body outside the RFC 6749 fields.
func assertNoLeak(t *testing.T, msg string) {
	t.Helper()
	for _, s := range []string{leakRT, leakS1, leakS2, leakAT, leakMarker} {
		for _, v := range []string{s, url.QueryEscape(s), url.PathEscape(s)} {
			if strings.Contains(msg, v) {
				t.Errorf("message holds %q: %s", v, msg)
			}
		}
	}
	for _, s := range []string{leakS1, leakS2} {
		basic := base64.StdEncoding.EncodeToString([]byte(leakID + ":" + url.QueryEscape(s)))
		if strings.Contains(msg, basic) {
			t.Errorf("message holds the basic credentials with %q: %s", s, msg)
		}
	}
}

func leakRequest(tokenURL string, style broker.AuthStyle) broker.UpstreamRequest {
	return broker.UpstreamRequest{
		TokenURL:      tokenURL + "/token?leak=" + url.QueryEscape(leakRT) + "&s=" + url.QueryEscape(leakS1),
		ClientID:      leakID,
		ClientSecrets: []string{leakS1, leakS2},
		AuthStyle:     style,
		GrantType:     broker.GrantRefreshToken,
		Scopes:        []string{"openid"},
		RefreshToken:  leakRT,
	}
}

func TestErrorHoldsNoSecret(t *testing.T) {
	jsonStr := func(s string) string {
		b, _ := json.Marshal(s)
		return string(b)
	}
	answers := map[string]func(w http.ResponseWriter, r *http.Request){
		"description echoes the request": func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 400, `{"error":"invalid_grant","error_description":`+jsonStr(echo(r))+`,"x":"`+leakMarker+`"}`)
		},
		"secret split by control characters": func(w http.ResponseWriter, r *http.Request) {
			split := leakRT[:5] + "\u0000\u007f\u0085" + leakRT[5:] + " " + leakS1[:3] + "\n\t" + leakS1[3:] + " \u001b[0m"
			replyJSON(w, 400, `{"error":"invalid_grant","error_description":`+jsonStr(split)+`}`)
		},
		"error code is a secret": func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 400, `{"error":`+jsonStr(leakRT+" "+leakS1)+`,"error_description":"x"}`)
		},
		"invalid_client echoes each secret": func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 401, `{"error":"invalid_client","error_description":`+jsonStr(echo(r))+`}`)
		},
		"form-encoded echo": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 400, "application/x-www-form-urlencoded", "error=invalid_request&error_description="+url.QueryEscape(echo(r))+"&m="+leakMarker)
		},
		"500 html echo": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 500, "text/html", "<pre>"+leakMarker+" "+echo(r)+"</pre>")
		},
		"404 plain echo": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 404, "text/plain", leakMarker+" "+echo(r))
		},
		"200 garbage echo": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, "application/json", leakMarker+" "+echo(r))
		},
		"200 without access_token": func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"token_type":"Bearer","m":`+jsonStr(leakMarker+echo(r))+`}`)
		},
		"200 with access_token and an error": func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"access_token":"`+leakAT+`","error":"invalid_grant","m":"`+leakMarker+`"}`)
		},
		"429 with a secret as Retry-After": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", leakRT)
			reply(w, 429, "text/plain", leakMarker+echo(r))
		},
		"redirect to a URL with secrets": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/x?"+r.PostForm.Encode(), http.StatusTemporaryRedirect)
		},
		"oversized echo": func(w http.ResponseWriter, r *http.Request) {
			replyJSON(w, 200, `{"m":"`+strings.Repeat(leakMarker, 1<<16)+`"}`)
		},
	}
	for name, answer := range answers {
		for _, style := range []broker.AuthStyle{broker.AuthStyleBasic, broker.AuthStylePost} {
			t.Run(fmt.Sprintf("%s/style%d", name, style), func(t *testing.T) {
				e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) { answer(w, r) })
				_, err := new(upstream.Client).Exchange(context.Background(), leakRequest(e.srv.URL, style))
				ue := asError(t, err)
				assertNoLeak(t, err.Error())
				assertNoLeak(t, fmt.Sprintf("%v %+v %s", err, err, err))
				assertNoLeak(t, ue.Description)
				assertNoLeak(t, ue.Code)
			})
		}
	}
}

func TestTransportErrorHoldsNoSecret(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		base := srv.URL
		srv.Close()
		_, err := new(upstream.Client).Exchange(context.Background(), leakRequest(base, broker.AuthStylePost))
		assertNoLeak(t, asError(t, err).Error())
	})
	t.Run("deadline", func(t *testing.T) {
		var e *endpoint
		e = newEndpoint(t, func(w http.ResponseWriter, r *http.Request, _ int) { e.block(r) })
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := new(upstream.Client).Exchange(ctx, leakRequest(e.srv.URL, broker.AuthStylePost))
		assertNoLeak(t, asError(t, err).Error())
	})
	for name, garbage := range map[string]string{
		"malformed status line": "HTTP/1.1 " + leakRT + " " + leakS1 + "\r\n\r\n",
		"not HTTP at all":       leakMarker + " " + leakRT + "\r\n\r\n",
		"bad header":            "HTTP/1.1 200 OK\r\nContent-Length: " + leakRT + "\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			addr := rawServer(t, garbage)
			_, err := new(upstream.Client).Exchange(context.Background(), leakRequest("http://"+addr, broker.AuthStyleBasic))
			ue := asError(t, err)
			if ue.Class != broker.Unanswered || ue.Err == nil {
				t.Errorf("got %v", ue)
			}
			assertNoLeak(t, ue.Error())
		})
	}
}

// rawServer answers every connection on 127.0.0.1 with answer once the
// request headers are in, then hangs up. It stops when the test ends.
func rawServer(t *testing.T, answer string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for range 10 { // the transport may retry; a few connections suffice
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(conn)
			for {
				line, err := br.ReadString('\n')
				if err != nil || line == "\r\n" {
					break
				}
			}
			_, _ = io.WriteString(conn, answer)
			conn.Close()
		}
	})
	return ln.Addr().String()
}

func TestErrorBuiltByHand(t *testing.T) {
	tests := []struct {
		err  *upstream.Error
		want string
	}{
		{&upstream.Error{Class: broker.Permanent, Code: "invalid_grant", StatusCode: 400},
			"upstream: permanent token endpoint failure: HTTP 400: invalid_grant"},
		{&upstream.Error{Class: broker.Transient, Err: context.Canceled},
			"upstream: transient token endpoint failure: request canceled"},
		{&upstream.Error{Class: broker.Transient, Err: fmt.Errorf("dial %s: %w", leakRT, context.DeadlineExceeded)},
			"upstream: transient token endpoint failure: request timed out"},
		{&upstream.Error{Class: broker.Transient, Err: errors.New(leakS1)},
			"upstream: transient token endpoint failure: transport error"},
		{&upstream.Error{Class: broker.Transient, StatusCode: 503, RetryAfter: 90 * time.Second},
			"upstream: transient token endpoint failure: HTTP 503 (retry after 1m30s)"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
		if tt.err.Err != nil && !errors.Is(tt.err, tt.err.Err) {
			t.Errorf("%v does not unwrap to %v", tt.err, tt.err.Err)
		}
	}
}
