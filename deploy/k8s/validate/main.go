// Command validate checks Kubernetes manifests offline against the real API types (k8s.io/api), decoding
// every document strictly: an unknown or misspelt field, a wrong type or an unknown kind is an error.
// It stands in for kubeconform, whose JSON schemas are fetched from GitHub at run time (unreachable here).
//
//	go run . ../*.yaml
package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

func newObject(apiVersion, kind string) any {
	switch apiVersion + "/" + kind {
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}
	case "batch/v1/Job":
		return &batchv1.Job{}
	case "v1/Service":
		return &corev1.Service{}
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	case "v1/PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "autoscaling/v2/HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}
	}
	return nil
}

func main() {
	failed, checked := 0, 0
	for _, path := range os.Args[1:] {
		data, err := os.ReadFile(path)
		if err != nil {
			fmt.Println(err)
			failed++
			continue
		}
		for i, doc := range bytes.Split(data, []byte("\n---")) {
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				fmt.Printf("%s[%d]: %v\n", path, i, err)
				failed++
				continue
			}
			if strings.HasPrefix(tm.APIVersion, "kustomize.config.k8s.io/") {
				continue
			}
			obj := newObject(tm.APIVersion, tm.Kind)
			if obj == nil {
				fmt.Printf("%s[%d]: unknown kind %s %s\n", path, i, tm.APIVersion, tm.Kind)
				failed++
				continue
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				fmt.Printf("%s[%d] %s: %v\n", path, i, tm.Kind, err)
				failed++
				continue
			}
			checked++
		}
	}
	fmt.Printf("checked %d objects, %d errors\n", checked, failed)
	if failed > 0 || checked == 0 {
		os.Exit(1)
	}
}
