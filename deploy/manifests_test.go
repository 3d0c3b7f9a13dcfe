package deploy_test

// Static checks of everything under deploy/ that no test runs for real here:
// the Kubernetes manifests (no cluster), the systemd unit, the example
// configs and the Grafana dashboard. Every setting they give strata is
// checked against the flags `strata serve` really has, and every metric the
// dashboard queries against the metrics the code registers.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// serveFlags are the flag names of `strata serve`, read from its source.
func serveFlags(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile("../cmd/strata/serve.go")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`f\.[A-Za-z0-9]+Var\(&o\.[A-Za-z0-9.]+,\s*"([a-z0-9-]+)"`)
	flags := map[string]bool{}
	for _, m := range re.FindAllSubmatch(src, -1) {
		flags[string(m[1])] = true
	}
	for _, f := range []string{"roles", "node-id", "data-dir", "grpc-addr", "raft-addr", "http-addr", "join", "zone"} {
		if !flags[f] {
			t.Fatalf("could not read the serve flags from cmd/strata/serve.go (no --%s among %v)", f, slices.Sorted(maps.Keys(flags)))
		}
	}
	return flags
}

// checkArgs checks that every --flag in args is a serve flag.
func checkArgs(t *testing.T, where string, args []string, flags map[string]bool) {
	t.Helper()
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !flags[name] {
			t.Errorf("%s: --%s is not a flag of strata serve", where, name)
		}
	}
}

// checkEnvName checks that a STRATA_* variable names a serve flag.
func checkEnvName(t *testing.T, where, name string, flags map[string]bool) {
	t.Helper()
	if !strings.HasPrefix(name, "STRATA_") {
		return
	}
	flag := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, "STRATA_")), "_", "-")
	if !flags[flag] {
		t.Errorf("%s: %s names no flag of strata serve", where, name)
	}
}

// ---- Kubernetes ----

type obj = map[string]any

func get(o any, path ...string) any {
	for _, p := range path {
		m, ok := o.(obj)
		if !ok {
			return nil
		}
		o = m[p]
	}
	return o
}

func str(o any, path ...string) string  { s, _ := get(o, path...).(string); return s }
func list(o any, path ...string) []any  { l, _ := get(o, path...).([]any); return l }
func mapping(o any, path ...string) obj { m, _ := get(o, path...).(obj); return m }

func readDocs(t *testing.T, path string) []obj {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var docs []obj
	dec := yaml.NewDecoder(f)
	for {
		var d obj
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs
}

// subset reports whether every key of sel has the same value in labels.
func subset(sel, labels obj) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestKubernetesManifests(t *testing.T) {
	flags := serveFlags(t)
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var all []obj
	byKind := map[string][]obj{}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		for _, d := range readDocs(t, f) {
			kind, name := str(d, "kind"), str(d, "metadata", "name")
			if str(d, "apiVersion") == "" || kind == "" || name == "" {
				t.Errorf("%s: a document without apiVersion, kind or metadata.name", f)
				continue
			}
			if kind != "Namespace" && str(d, "metadata", "namespace") != "strata" {
				t.Errorf("%s: %s/%s is not in namespace strata", f, kind, name)
			}
			all = append(all, d)
			byKind[kind] = append(byKind[kind], d)
		}
	}

	// The kustomization lists every file.
	kust := readDocs(t, "kubernetes/kustomization.yaml")[0]
	var listed []string
	for _, r := range list(kust, "resources") {
		listed = append(listed, r.(string))
	}
	var present []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			present = append(present, b)
		}
	}
	slices.Sort(listed)
	if !slices.Equal(listed, present) {
		t.Errorf("kustomization.yaml lists %v, the directory has %v", listed, present)
	}

	find := func(kind, name string) obj {
		for _, d := range byKind[kind] {
			if str(d, "metadata", "name") == name {
				return d
			}
		}
		t.Fatalf("no %s %s", kind, name)
		return nil
	}
	if len(byKind["Namespace"]) != 1 {
		t.Errorf("want one Namespace, got %d", len(byKind["Namespace"]))
	}
	cm := find("ConfigMap", "strata-config")
	cmData := mapping(cm, "data")

	meta, storage, api := find("StatefulSet", "strata-meta"), find("StatefulSet", "strata-storage"), find("Deployment", "strata-api")
	for _, w := range []struct {
		o        obj
		replicas int
		probe    string // readiness probe kind
	}{{meta, 3, "tcpSocket"}, {storage, 6, "tcpSocket"}, {api, 2, "httpGet"}} {
		name := str(w.o, "metadata", "name")
		if r, _ := get(w.o, "spec", "replicas").(int); r != w.replicas {
			t.Errorf("%s: replicas %v, want %d", name, get(w.o, "spec", "replicas"), w.replicas)
		}
		tmplLabels := mapping(w.o, "spec", "template", "metadata", "labels")
		if !subset(mapping(w.o, "spec", "selector", "matchLabels"), tmplLabels) {
			t.Errorf("%s: the selector does not match the pod template's labels", name)
		}
		pod := mapping(w.o, "spec", "template", "spec")
		if get(pod, "securityContext", "runAsNonRoot") != true {
			t.Errorf("%s: pod securityContext.runAsNonRoot is not true", name)
		}
		volumes := map[string]bool{}
		for _, v := range list(pod, "volumes") {
			volumes[str(v, "name")] = true
			if cmName := str(v, "configMap", "name"); cmName != "" && cmName != "strata-config" {
				t.Errorf("%s: volume from unknown ConfigMap %s", name, cmName)
			}
		}
		for _, c := range list(w.o, "spec", "volumeClaimTemplates") {
			volumes[str(c, "metadata", "name")] = true
		}
		if str(w.o, "kind") == "StatefulSet" {
			if len(list(w.o, "spec", "volumeClaimTemplates")) == 0 {
				t.Errorf("%s: no volumeClaimTemplates", name)
			}
			svc := find("Service", str(w.o, "spec", "serviceName"))
			if str(svc, "spec", "clusterIP") != "None" {
				t.Errorf("%s: its serviceName %s is not headless", name, str(svc, "metadata", "name"))
			}
		}
		containers := list(pod, "containers")
		if len(containers) == 0 {
			t.Fatalf("%s: no containers", name)
		}
		for _, c := range containers {
			where := name + "/" + str(c, "name")
			if str(c, "image") == "" {
				t.Errorf("%s: no image", where)
			}
			var args []string
			for _, a := range list(c, "args") {
				args = append(args, a.(string))
			}
			if len(args) == 0 || args[0] != "serve" {
				t.Errorf("%s: args %v do not start with serve", where, args)
			}
			checkArgs(t, where, args, flags)
			env := map[string]bool{}
			for _, e := range list(c, "env") {
				env[str(e, "name")] = true
				checkEnvName(t, where, str(e, "name"), flags)
				if ref := mapping(e, "valueFrom", "configMapKeyRef"); ref != nil {
					if str(ref, "name") != "strata-config" || cmData[str(ref, "key")] == nil {
						t.Errorf("%s: env %s from a missing ConfigMap key %v", where, str(e, "name"), ref)
					}
				}
			}
			for _, ef := range list(c, "envFrom") {
				if str(ef, "configMapRef", "name") != "strata-config" {
					t.Errorf("%s: envFrom an unknown ConfigMap", where)
				}
				for k := range cmData {
					if !strings.HasSuffix(k, ".yaml") {
						checkEnvName(t, where+" (ConfigMap)", k, flags)
					}
				}
			}
			for _, a := range args { // $(VAR) must be defined in env
				for _, m := range regexp.MustCompile(`\$\(([A-Z_]+)\)`).FindAllStringSubmatch(a, -1) {
					if !env[m[1]] {
						t.Errorf("%s: arg %q uses $(%s), which env does not define", where, a, m[1])
					}
				}
			}
			if get(c, "resources", "requests", "cpu") == nil || get(c, "resources", "requests", "memory") == nil {
				t.Errorf("%s: no cpu and memory requests", where)
			}
			if get(c, "readinessProbe", w.probe) == nil {
				t.Errorf("%s: readiness probe is not %s", where, w.probe)
			}
			if get(c, "livenessProbe") == nil {
				t.Errorf("%s: no liveness probe", where)
			}
			if w.probe == "httpGet" && str(c, "readinessProbe", "httpGet", "path") != "/readyz" {
				t.Errorf("%s: readiness probe path %q, want /readyz", where, str(c, "readinessProbe", "httpGet", "path"))
			}
			if get(c, "securityContext", "allowPrivilegeEscalation") != false {
				t.Errorf("%s: allowPrivilegeEscalation is not false", where)
			}
			ports := map[string]bool{}
			for _, p := range list(c, "ports") {
				ports[str(p, "name")] = true
			}
			for _, probe := range []string{"readinessProbe", "livenessProbe"} {
				for _, kind := range []string{"tcpSocket", "httpGet"} {
					if p, ok := get(c, probe, kind, "port").(string); ok && !ports[p] {
						t.Errorf("%s: %s names port %s, which the container does not have", where, probe, p)
					}
				}
			}
			for _, m := range list(c, "volumeMounts") {
				if !volumes[str(m, "name")] {
					t.Errorf("%s: volumeMount %s has no volume", where, str(m, "name"))
				}
			}
		}
	}

	// The per-pod config files of the meta nodes hold serve settings;
	// exactly one (the bootstrap node) has no join.
	noJoin := 0
	for i := range 3 {
		key := fmt.Sprintf("strata-meta-%d.yaml", i)
		s, ok := cmData[key].(string)
		if !ok {
			t.Fatalf("ConfigMap has no %s", key)
		}
		var m obj
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		for k := range m {
			if !flags[strings.ReplaceAll(k, "_", "-")] {
				t.Errorf("%s: %s is not a serve setting", key, k)
			}
		}
		if m["join"] == nil {
			noJoin++
		}
	}
	if noJoin != 1 {
		t.Errorf("%d meta pods bootstrap (no join), want exactly 1", noJoin)
	}

	// Services and disruption budgets select pods that exist.
	var podLabels []obj
	for _, w := range []obj{meta, storage, api} {
		podLabels = append(podLabels, mapping(w, "spec", "template", "metadata", "labels"))
	}
	selects := func(sel obj) bool {
		return slices.ContainsFunc(podLabels, func(l obj) bool { return subset(sel, l) })
	}
	for _, s := range byKind["Service"] {
		if !selects(mapping(s, "spec", "selector")) {
			t.Errorf("Service %s selects no pods", str(s, "metadata", "name"))
		}
	}
	for _, name := range []string{"strata-meta", "strata-storage"} {
		pdb := find("PodDisruptionBudget", name)
		if get(pdb, "spec", "maxUnavailable") != 1 {
			t.Errorf("PodDisruptionBudget %s: maxUnavailable %v, want 1", name, get(pdb, "spec", "maxUnavailable"))
		}
	}
	for _, p := range byKind["PodDisruptionBudget"] {
		if !selects(mapping(p, "spec", "selector", "matchLabels")) {
			t.Errorf("PodDisruptionBudget %s selects no pods", str(p, "metadata", "name"))
		}
	}
	t.Logf("%d objects in %d files", len(all), len(files)-1)
}

// ---- Compose ----

func TestComposeFile(t *testing.T) {
	flags := serveFlags(t)
	d := readDocs(t, "compose.yaml")[0]
	services := mapping(d, "services")
	want := []string{"a1", "a2", "lb", "m1", "m2", "m3", "s1", "s2", "s3", "s4", "s5", "s6"}
	if got := slices.Sorted(maps.Keys(services)); !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}
	zones := map[string]string{}
	for name, s := range services {
		if name != "lb" && get(s, "ports") != nil {
			t.Errorf("%s publishes ports; only lb may", name)
		}
		if name == "lb" {
			continue
		}
		var args []string
		for _, a := range list(s, "command") {
			args = append(args, a.(string))
		}
		checkArgs(t, name, args, flags)
		if i := slices.Index(args, "--node-id"); i < 0 || args[i+1] != name {
			t.Errorf("%s: --node-id is not %s", name, name)
		}
		if hasJoin := slices.Contains(args, "--join"); hasJoin == (name == "m1") {
			t.Errorf("%s: --join given %v; only m1 bootstraps", name, hasJoin)
		}
		if i := slices.Index(args, "--zone"); i >= 0 {
			zones[name] = args[i+1]
		}
	}
	wantZones := map[string]string{"s1": "a", "s2": "a", "s3": "b", "s4": "b", "s5": "c", "s6": "c"}
	if !maps.Equal(zones, wantZones) {
		t.Errorf("zones %v, want %v", zones, wantZones)
	}
}

// ---- systemd and example configs ----

func TestSystemdUnit(t *testing.T) {
	f, err := os.Open("systemd/strata@.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			keys[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("line %d: %q is not key=value in a section", n, line)
			}
			keys[section][k] = append(keys[section][k], v)
		}
	}
	for k, v := range map[string]string{
		"User": "strata", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"ReadWritePaths": "/var/lib/strata", "Restart": "on-failure",
		"ExecStart": "/usr/local/bin/strata serve --config /etc/strata/%i.yaml",
	} {
		if !slices.Contains(keys["Service"][k], v) {
			t.Errorf("[Service] %s=%s missing (have %v)", k, v, keys["Service"][k])
		}
	}
	if keys["Service"]["LimitNOFILE"] == nil {
		t.Error("[Service] LimitNOFILE missing")
	}
	if keys["Install"]["WantedBy"] == nil {
		t.Error("[Install] WantedBy missing")
	}
}

func TestExampleConfigs(t *testing.T) {
	flags := serveFlags(t)
	files, _ := filepath.Glob("examples/*.yaml")
	if len(files) != 3 {
		t.Fatalf("want 3 example configs, got %v", files)
	}
	ids, grpc := map[string]bool{}, map[string]string{}
	bootstrap := 0
	for _, f := range files {
		d := readDocs(t, f)[0]
		for k := range d {
			if !flags[strings.ReplaceAll(k, "_", "-")] {
				t.Errorf("%s: %s is not a serve setting (serve refuses unknown keys)", f, k)
			}
		}
		id := str(d, "node-id")
		if ids[id] {
			t.Errorf("%s: node-id %s used twice", f, id)
		}
		ids[id] = true
		grpc[id] = str(d, "grpc-addr")
		if str(d, "data-dir") != "/var/lib/strata/"+id {
			t.Errorf("%s: data-dir %s, want /var/lib/strata/%s (the systemd unit's state directory)", f, str(d, "data-dir"), id)
		}
		if d["join"] == nil {
			bootstrap++
		}
	}
	if bootstrap != 1 {
		t.Errorf("%d configs bootstrap (no join), want 1", bootstrap)
	}
	// Every join address is another node's gRPC address.
	addrs := slices.Collect(maps.Values(grpc))
	for _, f := range files {
		d := readDocs(t, f)[0]
		for _, j := range list(d, "join") {
			if !slices.Contains(addrs, j.(string)) || j == grpc[str(d, "node-id")] {
				t.Errorf("%s: join %v is not another node's grpc-addr", f, j)
			}
		}
	}
}

// ---- Grafana ----

// registeredMetrics collects metric names from the Go source: literal
// "strata_..." names, and Namespace "strata" + Subsystem + Name triples
// (the name may be a string literal anywhere in the same file).
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	lit := regexp.MustCompile(`"(strata_[a-z0-9_]+)"`)
	sub := regexp.MustCompile(`Namespace:\s*"strata",\s*Subsystem:\s*"([a-z0-9_]+)"`)
	anyLit := regexp.MustCompile(`"([a-z0-9_]+)"`)
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "bin" || d.Name() == "deploy") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range lit.FindAllSubmatch(src, -1) {
			names[string(m[1])] = true
		}
		for _, s := range sub.FindAllSubmatch(src, -1) {
			for _, l := range anyLit.FindAllSubmatch(src, -1) {
				names["strata_"+string(s[1])+"_"+string(l[1])] = true
				if bytes.Contains(src, []byte(`"_total"`)) {
					names["strata_"+string(s[1])+"_"+string(l[1])+"_total"] = true
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/strata.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			GridPos *struct {
				H, W, X, Y int
			} `json:"gridPos"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("grafana/strata.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatal("dashboard without title, uid or panels")
	}
	known := registeredMetrics(t)
	metric := regexp.MustCompile(`\b((?:strata|go|process)_[a-z0-9_]+)`)
	ids := map[int]bool{}
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos", p.Title)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		for _, q := range p.Targets {
			if q.Expr == "" || q.RefID == "" {
				t.Errorf("panel %q: a query without expr or refId", p.Title)
			}
			if strings.Count(q.Expr, "(") != strings.Count(q.Expr, ")") || strings.Count(q.Expr, "{") != strings.Count(q.Expr, "}") {
				t.Errorf("panel %q: unbalanced brackets in %s", p.Title, q.Expr)
			}
			for _, m := range metric.FindAllString(q.Expr, -1) {
				used[m] = true
				if !strings.HasPrefix(m, "strata_") {
					continue // Go and process collectors
				}
				base := m
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					base = strings.TrimSuffix(base, suf)
				}
				if !known[m] && !known[base] {
					t.Errorf("panel %q queries %s, which no code registers", p.Title, m)
				}
			}
		}
	}
	for _, m := range []string{"strata_http_requests_total", "strata_http_request_duration_seconds_bucket",
		"strata_http_request_bytes_total", "strata_http_response_bytes_total", "strata_http_requests_in_flight"} {
		if !used[m] {
			t.Errorf("the dashboard does not use %s", m)
		}
	}
}
