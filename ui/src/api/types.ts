// What the UI reads from the API's free-form JSON responses (jobs, versions, artifacts,
// reports). Requests and paths are typed by the generated schema; these are the views.

export type JobState = 'queued' | 'planning' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface Stage {
  index: number;
  kind: string;
  state: string;
  attempt: number;
  max_attempts: number;
  reason?: string | null;
  started_at?: number;
  updated_at: number;
}

export interface Eta {
  estimated_completion_minutes: number;
  estimated_completion_at: number;
  basis: string;
}

export interface Job {
  id: string;
  project: string;
  model: string;
  version: string;
  policy: string;
  state: JobState;
  stages: Stage[];
  reason?: string | null;
  created_at: number;
  updated_at: number;
  current_stage: { index: number; kind: string; state: string; attempt: number; max_attempts: number } | null;
  progress: { done: number; total: number };
  health: 'ok' | 'retrying' | 'failed' | 'cancelled';
  eta: Eta | null;
  timeline?: { time: number; event: string; detail: string }[];
  recipe_yaml?: string;
}

export interface Version {
  id: string;
  model_id: string;
  version: string;
  state: string;
  latest_job: string | null;
  created_at: number;
}

export interface Model {
  id: string;
  project: string;
  name: string;
  task?: string | null;
  created_at: number;
}

export interface TaskMetric {
  name: string;
  value: number;
  baseline: number;
  drop_pct: number;
  eval_rows?: number;
}

export interface Artifact {
  artifact_id: string;
  model_id: string;
  job: string;
  runtime: string;
  format: string;
  precision?: string | null;
  uri: string;
  uri_expires_at: number;
  size_bytes: number;
  sha256: string;
  compression?: { technique?: string; ratio?: number } | null;
  metrics?: {
    task?: TaskMetric;
    latency_ms_p50?: number;
    baseline_latency_ms_p50?: number;
    speedup_p50?: number;
    [k: string]: unknown;
  } | null;
  compatibility?: Record<string, { loads?: boolean; version?: string; checks?: unknown; problems?: unknown[] }> | null;
  flags?: string[] | null;
  missed_constraints?: string[] | null;
  not_evaluated?: string | null;
}

export interface Template {
  id: string;
  title: string;
  technique: string;
  description?: string | null;
  stages?: string[] | null;
  yaml: string;
}

export interface Policy {
  id: string;
  project: string;
  name: string;
  yaml: string;
}

export const ACTIVE: JobState[] = ['queued', 'planning', 'running'];
export const RUNTIMES = ['onnxruntime', 'tflite'] as const;
