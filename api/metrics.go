package api

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	bytesIn   *prometheus.CounterVec
	bytesOut  *prometheus.CounterVec
	inflight  prometheus.Gauge
	throttled prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_http_requests_total", Help: "HTTP requests by route, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "strata_http_request_duration_seconds", Help: "HTTP request latency by route and method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14),
		}, []string{"route", "method"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_http_request_bytes_total", Help: "Request body bytes received by route.",
		}, []string{"route"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_http_response_bytes_total", Help: "Response body bytes sent by route.",
		}, []string{"route"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "strata_http_requests_in_flight", Help: "HTTP requests being served.",
		}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "strata_http_requests_throttled_total", Help: "Requests refused with 429 because too many were moving blob data, or no read memory was free for a blob GET.",
		}),
	}
	reg.MustRegister(m.requests, m.latency, m.bytesIn, m.bytesOut, m.inflight, m.throttled)
	return m
}

type routeLabelKey struct{}

type routeLabel struct{ v string }

// setRouteLabel names the route of r for the metrics of the request.
func setRouteLabel(r *http.Request, v string) {
	if l, ok := r.Context().Value(routeLabelKey{}).(*routeLabel); ok {
		l.v = v
	}
}

// instrument records request count, latency and bytes for every request.
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		lbl := &routeLabel{v: "unknown"}
		r = r.WithContext(context.WithValue(r.Context(), routeLabelKey{}, lbl))
		cw := &countingWriter{ResponseWriter: w, code: http.StatusOK}
		var cr *countingReader
		if r.Body != nil && r.Body != http.NoBody {
			cr = &countingReader{r: r.Body}
			r.Body = cr
		}
		s.metrics.inflight.Inc()
		defer s.metrics.inflight.Dec()
		next.ServeHTTP(cw, r)
		s.metrics.requests.WithLabelValues(lbl.v, r.Method, strconv.Itoa(cw.code)).Inc()
		s.metrics.latency.WithLabelValues(lbl.v, r.Method).Observe(time.Since(start).Seconds())
		s.metrics.bytesOut.WithLabelValues(lbl.v).Add(float64(cw.n))
		if cr != nil {
			s.metrics.bytesIn.WithLabelValues(lbl.v).Add(float64(cr.n))
		}
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "code", cw.code,
			"bytes_out", cw.n, "duration", time.Since(start))
	})
}

type countingWriter struct {
	http.ResponseWriter
	code        int
	n           int64
	wroteHeader bool
}

func (c *countingWriter) WriteHeader(code int) {
	if !c.wroteHeader {
		c.code = code
		c.wroteHeader = true
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.wroteHeader = true
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadFrom keeps io.Copy's sendfile/splice fast path reachable.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	c.wroteHeader = true
	n, err := io.Copy(c.ResponseWriter, r)
	c.n += n
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

type countingReader struct {
	r io.ReadCloser
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }
