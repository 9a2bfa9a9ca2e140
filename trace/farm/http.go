package farm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mxlb/mxlb/trace"
	"github.com/mxlb/mxlb/trace/api"
	"github.com/mxlb/mxlb/trace/lbrecord"
)

// maxBody bounds one source's answer: an agent cuts its list at api.MaxAnswer bytes of
// messages; the envelope adds little.
const maxBody = api.MaxAnswer + 1<<20

// AgentHTTP asks the agent trace listener at addr (host:port) with the bearer token
// ("" sends none).
func AgentHTTP(c *http.Client, addr, token string) AgentFetch {
	return func(ctx context.Context, q trace.Query) ([]trace.Message, bool, error) {
		v := url.Values{}
		set(v, "rcpt", q.Recipient)
		set(v, "from", q.Sender)
		set(v, "msgid", q.MessageID)
		set(v, "queue_id", q.QueueID)
		set(v, "status", string(q.Status))
		setTime(v, "since", q.Since)
		setTime(v, "until", q.Until)
		if q.Limit > 0 {
			v.Set("limit", strconv.Itoa(min(q.Limit, api.MaxLimit)))
		}
		var ans api.TraceAnswer
		if err := get(ctx, c, "http://"+addr+"/trace?"+v.Encode(), token, &ans); err != nil {
			return nil, false, err
		}
		// The agent names its host; each message already carries it.
		for i := range ans.Messages {
			if ans.Messages[i].MTA == "" {
				ans.Messages[i].MTA = ans.MTA
			}
		}
		return ans.Messages, ans.Truncated, nil
	}
}

// NodeAnswer is the body of a node's own answer (GET /api/v1/trace?scope=node).
type NodeAnswer struct {
	Node      string            `json:"node"`
	Records   []lbrecord.Record `json:"records"`
	Truncated bool              `json:"truncated"`
}

// NodeHTTP asks the admin API at addr (host:port) for that node's own records, with the
// bearer token ("" sends none).
func NodeHTTP(c *http.Client, addr, token string) NodeFetch {
	return func(ctx context.Context, q lbrecord.Query) ([]lbrecord.Record, bool, error) {
		v := url.Values{"scope": {"node"}}
		set(v, "rcpt", q.Recipient)
		set(v, "sender", q.Sender)
		set(v, "client", q.ClientIP)
		if q.ClientPort > 0 {
			v.Set("client_port", strconv.Itoa(q.ClientPort)) // a node without it answers by address
		}
		set(v, "queue_id", q.QueueID)
		setTime(v, "since", q.Since)
		setTime(v, "until", q.Until)
		if q.Limit > 0 {
			v.Set("limit", strconv.Itoa(min(q.Limit, MaxLimit)))
		}
		var ans NodeAnswer
		if err := get(ctx, c, "http://"+addr+"/api/v1/trace?"+v.Encode(), token, &ans); err != nil {
			return nil, false, err
		}
		return ans.Records, ans.Truncated, nil
	}
}

func set(v url.Values, k, s string) {
	if s != "" {
		v.Set(k, s)
	}
}

func setTime(v url.Values, k string, t time.Time) {
	if !t.IsZero() {
		v.Set(k, t.UTC().Format(time.RFC3339Nano))
	}
}

func get(ctx context.Context, c *http.Client, u, token string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxBody+1)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(body, 512))
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return fmt.Errorf("%s: %s", resp.Status, msg)
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	if len(b) > maxBody {
		return fmt.Errorf("answer larger than %d bytes", maxBody)
	}
	if err := json.Unmarshal(b, into); err != nil {
		return fmt.Errorf("bad answer: %w", err)
	}
	return nil
}
