package deploy

import (
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// k8sTypes are the kinds the base may hold, each with the Go type it must
// decode into. A kind missing here fails the check: add its type.
var k8sTypes = map[schema.GroupVersionKind]func() any{
	appsv1.SchemeGroupVersion.WithKind("Deployment"):            func() any { return new(appsv1.Deployment) },
	corev1.SchemeGroupVersion.WithKind("Service"):               func() any { return new(corev1.Service) },
	corev1.SchemeGroupVersion.WithKind("ServiceAccount"):        func() any { return new(corev1.ServiceAccount) },
	corev1.SchemeGroupVersion.WithKind("ConfigMap"):             func() any { return new(corev1.ConfigMap) },
	policyv1.SchemeGroupVersion.WithKind("PodDisruptionBudget"): func() any { return new(policyv1.PodDisruptionBudget) },
	networkingv1.SchemeGroupVersion.WithKind("NetworkPolicy"):   func() any { return new(networkingv1.NetworkPolicy) },
	monitoringv1.SchemeGroupVersion.WithKind("ServiceMonitor"):  func() any { return new(monitoringv1.ServiceMonitor) },
}

// k8sBase is the rendered base, each object decoded into its type.
type k8sBase struct {
	deployment     *appsv1.Deployment
	service        *corev1.Service
	serviceAccount *corev1.ServiceAccount
	configMap      *corev1.ConfigMap
	pdb            *policyv1.PodDisruptionBudget
	networkPolicy  *networkingv1.NetworkPolicy
	serviceMonitor *monitoringv1.ServiceMonitor
}

// renderK8s runs kustomize (its Go API, at the version go.mod pins) on
// deploy/k8s and decodes every object strictly: an unknown field, a field
// of the wrong type, a duplicate field or an unknown kind fails.
func renderK8s(t *testing.T) *k8sBase {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), "k8s")
	if err != nil {
		t.Fatalf("kustomize build deploy/k8s: %v", err)
	}
	var b k8sBase
	for _, r := range resources.Resources() {
		gvk := r.GetGvk()
		key := schema.GroupVersionKind{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind}
		newObj, ok := k8sTypes[key]
		if !ok {
			t.Errorf("%s %s: a kind the check has no type for", key, r.GetName())
			continue
		}
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		obj := newObj()
		if err := decodeStrict(doc, obj); err != nil {
			t.Errorf("%s %s does not decode strictly into %T: %v", key.Kind, r.GetName(), obj, err)
			continue
		}
		var dup bool
		switch o := obj.(type) {
		case *appsv1.Deployment:
			dup, b.deployment = b.deployment != nil, o
		case *corev1.Service:
			dup, b.service = b.service != nil, o
		case *corev1.ServiceAccount:
			dup, b.serviceAccount = b.serviceAccount != nil, o
		case *corev1.ConfigMap:
			dup, b.configMap = b.configMap != nil, o
		case *policyv1.PodDisruptionBudget:
			dup, b.pdb = b.pdb != nil, o
		case *networkingv1.NetworkPolicy:
			dup, b.networkPolicy = b.networkPolicy != nil, o
		case *monitoringv1.ServiceMonitor:
			dup, b.serviceMonitor = b.serviceMonitor != nil, o
		}
		if dup {
			t.Errorf("more than one %s in the base", key.Kind)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for kind, missing := range map[string]bool{
		"Deployment": b.deployment == nil, "Service": b.service == nil, "ServiceAccount": b.serviceAccount == nil,
		"ConfigMap": b.configMap == nil, "PodDisruptionBudget": b.pdb == nil,
		"NetworkPolicy": b.networkPolicy == nil, "ServiceMonitor": b.serviceMonitor == nil,
	} {
		if missing {
			t.Errorf("the base has no %s", kind)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return &b
}

// TestStrictDecodeCatchesMistakes shows that the decoding above fails on
// the mistakes it is there for.
func TestStrictDecodeCatchesMistakes(t *testing.T) {
	t.Parallel()
	for name, doc := range map[string]string{
		"unknown field": "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replica: 3\n",
		"wrong type":    "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: three\n",
		"duplicate":     "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 3\n  replicas: 2\n",
		"wrong case":    "apiVersion: apps/v1\nkind: Deployment\nspec:\n  revisionhistorylimit: 3\n",
		"bad quantity":  "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: x\n    resources:\n      limits:\n        memory: lots\n",
	} {
		obj := any(new(appsv1.Deployment))
		if strings.Contains(doc, "kind: Pod") {
			obj = new(corev1.Pod)
		}
		if err := decodeStrict([]byte(doc), obj); err == nil {
			t.Errorf("%s: decoded without an error", name)
		}
	}
	var sm monitoringv1.ServiceMonitor
	for _, doc := range []string{"spec:\n  endpoint:\n  - port: metrics\n", "spec:\n  endpoints:\n  - port: metrics\n    scrapeTimeOut: 10s\n"} {
		if err := decodeStrict([]byte(doc), &sm); err == nil {
			t.Errorf("a ServiceMonitor with an unknown field decoded without an error:\n%s", doc)
		}
	}
}

// TestKustomizeBase renders deploy/k8s and checks what the objects promise
// each other and the broker: selectors that select the pods, ports and
// probes on ports that exist, health service names the broker answers
// SERVING for, TOKENBROKER_* variables that are broker flags, the Secret
// references, and the security context.
func TestKustomizeBase(t *testing.T) {
	t.Parallel()
	b := renderK8s(t)
	f := getFacts(t)
	d := b.deployment
	pod := d.Spec.Template
	podLabels := k8slabels.Set(pod.Labels)

	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("Deployment replicas = %v, want 3", d.Spec.Replicas)
	}
	if !selects(t, "Deployment", d.Spec.Selector, podLabels) {
		t.Error("the Deployment's selector does not select its own pods")
	}
	if pod.Spec.ServiceAccountName != b.serviceAccount.Name {
		t.Errorf("pods run as %q, not the ServiceAccount %q", pod.Spec.ServiceAccountName, b.serviceAccount.Name)
	}
	if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		t.Error("the broker calls no Kubernetes API: automountServiceAccountToken should be false")
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	if !strings.HasPrefix(c.Image, "tokenbroker/broker:") {
		t.Errorf("image %q: want tokenbroker/broker with a tag (kustomize images:)", c.Image)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["grpc"] == 0 || ports["metrics"] == 0 {
		t.Fatalf("the container needs ports named grpc and metrics: %v", c.Ports)
	}

	// Probes: the kubelet's gRPC probe on the gRPC port, asking a service
	// the broker answers SERVING for.
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.GRPC == nil {
			t.Errorf("%s probe: want a grpc probe (grpc.health.v1)", name)
			continue
		}
		if p.GRPC.Port != ports["grpc"] {
			t.Errorf("%s probe on port %d, not the gRPC port %d", name, p.GRPC.Port, ports["grpc"])
		}
		svc := ""
		if p.GRPC.Service != nil {
			svc = *p.GRPC.Service
		}
		if !f.healthy[svc] {
			t.Errorf("%s probe asks for service %q, which a healthy broker does not answer SERVING (checked: %q)", name, svc, probedServices)
		}
		// Readiness follows Redis and draining; liveness must not, or a
		// Redis outage restarts every replica.
		if (name == "liveness") != (svc == "liveness") {
			t.Errorf("%s probe asks for service %q: readiness asks for \"\" (or a service), liveness for \"liveness\"", name, svc)
		}
	}

	// Resources.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("no %s request", r)
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.Cmp(c.Resources.Requests[corev1.ResourceMemory]) < 0 {
		t.Error("want a memory limit at least the request")
	}

	// Security context: the container's own, else the pod's.
	psc, csc := pod.Spec.SecurityContext, c.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if csc == nil {
		csc = &corev1.SecurityContext{}
	}
	runAsNonRoot := firstBool(csc.RunAsNonRoot, psc.RunAsNonRoot)
	runAsUser := firstInt(csc.RunAsUser, psc.RunAsUser)
	seccomp := csc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	switch {
	case runAsNonRoot == nil || !*runAsNonRoot:
		t.Error("runAsNonRoot is not true")
	case runAsUser == nil || *runAsUser == 0:
		t.Error("want a numeric non-root runAsUser (the image's 65532)")
	}
	if csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true")
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if csc.Privileged != nil && *csc.Privileged {
		t.Error("privileged")
	}
	if csc.Capabilities == nil || len(csc.Capabilities.Add) > 0 || !containsCap(csc.Capabilities.Drop, "ALL") {
		t.Error("capabilities: want drop ALL and nothing added")
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("seccompProfile is not RuntimeDefault")
	}

	// The ConfigMap and the environment: every TOKENBROKER_* is a flag.
	env := map[string]string{}
	foundConfigMap := false
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil && ef.ConfigMapRef.Name == b.configMap.Name {
			foundConfigMap = true
		}
	}
	if !foundConfigMap {
		t.Errorf("the container does not take its environment from the ConfigMap %s", b.configMap.Name)
	}
	var names []string
	for k, v := range b.configMap.Data {
		if !strings.HasPrefix(k, "TOKENBROKER_") {
			t.Errorf("ConfigMap key %s: want only TOKENBROKER_* variables", k)
		}
		names = append(names, k)
		env[k] = v
	}
	secretKeys := map[string]bool{}
	secretName := ""
	for _, e := range c.Env {
		names = append(names, e.Name)
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if secretName != "" && ref.Name != secretName {
				t.Errorf("secrets come from %s and %s: want one Secret", secretName, ref.Name)
			}
			secretName = ref.Name
			secretKeys[ref.Key] = true
			if _, inConfig := b.configMap.Data[e.Name]; inConfig {
				t.Errorf("%s is in the ConfigMap and from the Secret", e.Name)
			}
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		}
	}
	f.checkBrokerEnv(t, "Deployment", names)
	f.checkBrokerArgs(t, "Deployment args", append(append([]string{}, c.Command...), c.Args...))
	for _, key := range []string{"TOKENBROKER_SEAL_KEYS", "TOKENBROKER_REDIS_URL"} {
		found := false
		for _, e := range c.Env {
			found = found || (e.Name == key && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil)
		}
		if !found {
			t.Errorf("%s should come from the Secret", key)
		}
	}
	if _, ok := env["TOKENBROKER_SEAL_KEYS"]; ok {
		t.Error("seal keys in plain configuration")
	}

	// Listen addresses on the container's ports, on every interface.
	for envName, port := range map[string]string{"TOKENBROKER_GRPC_ADDR": "grpc", "TOKENBROKER_METRICS_ADDR": "metrics"} {
		host, p, err := net.SplitHostPort(env[envName])
		if err != nil || (host != "" && host != "0.0.0.0" && host != "::") || p != strconv.Itoa(int(ports[port])) {
			t.Errorf("%s=%q: want :%d (all interfaces, the %s port)", envName, env[envName], ports[port], port)
		}
	}

	// Volumes: the client registry from the Secret, and a writable journal.
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	volumeAt := func(file string) (*corev1.Volume, corev1.VolumeMount) {
		for i, v := range pod.Spec.Volumes {
			m, ok := mounts[v.Name]
			if ok && (file == m.MountPath || strings.HasPrefix(file, m.MountPath+"/")) {
				return &pod.Spec.Volumes[i], m
			}
		}
		return nil, corev1.VolumeMount{}
	}
	if clients := env["TOKENBROKER_CLIENTS_FILE"]; clients == "" {
		t.Error("no TOKENBROKER_CLIENTS_FILE: callers must authenticate")
	} else if v, m := volumeAt(clients); v == nil || v.Secret == nil {
		t.Errorf("TOKENBROKER_CLIENTS_FILE=%s is on no Secret volume", clients)
	} else {
		if v.Secret.SecretName != secretName {
			t.Errorf("the client registry comes from Secret %s, the other secrets from %s", v.Secret.SecretName, secretName)
		}
		rel := strings.TrimPrefix(clients, m.MountPath+"/")
		found := false
		for _, it := range v.Secret.Items {
			found = found || it.Path == rel
			secretKeys[it.Key] = true
		}
		if !found {
			t.Errorf("the Secret volume has no item at %s", rel)
		}
		if !m.ReadOnly {
			t.Error("mount the client registry read-only")
		}
	}
	if dir := env["TOKENBROKER_JOURNAL_DIR"]; dir == "" {
		t.Error("no TOKENBROKER_JOURNAL_DIR")
	} else if v, m := volumeAt(dir); v == nil || m.ReadOnly || (v.EmptyDir == nil && v.PersistentVolumeClaim == nil && v.Ephemeral == nil) {
		t.Errorf("TOKENBROKER_JOURNAL_DIR=%s is on no writable emptyDir or persistent volume (the root filesystem is read-only)", dir)
	}
	t.Logf("the Secret %s must hold the keys %s", secretName, keys(secretKeys))

	// Shutdown: the grace period covers the preStop pause and the drain.
	drain, err := time.ParseDuration(env["TOKENBROKER_SHUTDOWN_TIMEOUT"])
	if err != nil {
		t.Errorf("TOKENBROKER_SHUTDOWN_TIMEOUT: %v", err)
	}
	var pause time.Duration
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		pause = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	if grace := pod.Spec.TerminationGracePeriodSeconds; grace == nil || time.Duration(*grace)*time.Second <= drain+pause {
		t.Errorf("terminationGracePeriodSeconds %v does not exceed the preStop pause %v + --shutdown-timeout %v", grace, pause, drain)
	}

	// Service.
	if !k8slabels.SelectorFromSet(b.service.Spec.Selector).Matches(podLabels) || len(b.service.Spec.Selector) == 0 {
		t.Error("the Service does not select the broker's pods")
	}
	servicePorts := map[string]bool{}
	for _, p := range b.service.Spec.Ports {
		servicePorts[p.Name] = true
		if !targetsPort(p.TargetPort, ports) {
			t.Errorf("Service port %s targets %s, which the container does not have", p.Name, p.TargetPort.String())
		}
	}

	// PodDisruptionBudget.
	if !selects(t, "PodDisruptionBudget", b.pdb.Spec.Selector, podLabels) {
		t.Error("the PodDisruptionBudget does not select the broker's pods")
	}
	if b.pdb.Spec.MinAvailable == nil && b.pdb.Spec.MaxUnavailable == nil {
		t.Error("the PodDisruptionBudget sets neither minAvailable nor maxUnavailable")
	}

	// NetworkPolicy.
	np := b.networkPolicy
	if !selects(t, "NetworkPolicy", &np.Spec.PodSelector, podLabels) {
		t.Error("the NetworkPolicy does not select the broker's pods")
	}
	allowed := map[string]bool{}
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port == nil || !targetsPort(*p.Port, ports) {
				t.Errorf("NetworkPolicy ingress port %v is no container port", p.Port)
				continue
			}
			allowed[p.Port.String()] = true
		}
	}
	if !allowed["grpc"] || !allowed["metrics"] {
		t.Errorf("the NetworkPolicy should let callers reach grpc and Prometheus reach metrics: %v", allowed)
	}

	// ServiceMonitor.
	sm := b.serviceMonitor.Spec
	if !selects(t, "ServiceMonitor", &sm.Selector, k8slabels.Set(b.service.Labels)) {
		t.Error("the ServiceMonitor does not select the Service")
	}
	if len(sm.Endpoints) == 0 {
		t.Fatal("the ServiceMonitor has no endpoint")
	}
	for _, ep := range sm.Endpoints {
		if !servicePorts[ep.Port] || ep.Port != "metrics" {
			t.Errorf("ServiceMonitor endpoint port %q: want the Service's metrics port", ep.Port)
		}
		if ep.Path != "" && ep.Path != "/metrics" {
			t.Errorf("ServiceMonitor path %q: the broker serves /metrics", ep.Path)
		}
	}
	if job := b.service.Labels[sm.JobLabel]; sm.JobLabel == "" || job != "tokenbroker" {
		t.Errorf("the ServiceMonitor's jobLabel %q gives job %q; the alerts select job=\"tokenbroker\"", sm.JobLabel, job)
	}
}

func selects(t *testing.T, what string, sel *metav1.LabelSelector, set k8slabels.Set) bool {
	t.Helper()
	if sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		t.Errorf("%s: an empty selector selects every pod", what)
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return false
	}
	return s.Matches(set)
}

func targetsPort(p intstr.IntOrString, ports map[string]int32) bool {
	if p.Type == intstr.String {
		_, ok := ports[p.StrVal]
		return ok
	}
	for _, n := range ports {
		if n == p.IntVal {
			return true
		}
	}
	return false
}

func firstBool(vs ...*bool) *bool {
	for _, v := range vs {
		if v != nil {
			return v
		}
	}
	return nil
}

func firstInt(vs ...*int64) *int64 {
	for _, v := range vs {
		if v != nil {
			return v
		}
	}
	return nil
}

func containsCap(caps []corev1.Capability, c corev1.Capability) bool {
	for _, x := range caps {
		if x == c {
			return true
		}
	}
	return false
}

// TestK8sReadme checks that the base's README says what an operator needs
// to know about Redis and the journal directory.
func TestK8sReadme(t *testing.T) {
	t.Parallel()
	b := readFile(t, path.Join("k8s", "README.md"))
	for _, needle := range []string{"Sentinel", "managed Redis", "--journal-dir", "PersistentVolumeClaim", "emptyDir", "create secret generic"} {
		if !strings.Contains(b, needle) {
			t.Errorf("k8s/README.md does not mention %s", needle)
		}
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
