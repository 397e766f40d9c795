package storageapi;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import storage.StorageException;

/**
 * The storage conf (same format and keys as storage_api/_compss/_conf.py): {@code key=value} lines,
 * {@code #} comments, optional double quotes; every key optional; unknown keys are an error.
 *
 * <p>An empty {@code redis_url} resolves as storage_api.connect() does: {@code STORAGE_API_REDIS_URL},
 * then the TOML file {@code STORAGE_API_CONFIG}, then the local deployment's client.toml
 * ({@code $STORAGE_API_HOME/local/client.toml}, default {@code ~/.storage-api/local/client.toml}).
 */
public final class StorageConf {

    static final String[][] DEFAULTS = {
        { "redis_url", "" },
        { "secret_file", "" },
        { "namespace", "sa" },
        { "network", "ethernet" },
        { "network_suffixes", "ethernet=,infiniband=-ib0,data=-data" },
        { "location_cache_ms", "1000" },
        { "control_timeout", "120" },
    };

    private final Map<String, String> values = new LinkedHashMap<>();
    private final java.util.Set<String> given = new java.util.HashSet<>();
    private final String path;

    private StorageConf(String path) {
        this.path = path;
        for (String[] kv : DEFAULTS) {
            values.put(kv[0], kv[1]);
        }
    }

    /** Reads {@code path}; null, "" and "null" (COMPSs' "no conf") give every default. */
    public static StorageConf read(String path) throws StorageException {
        StorageConf conf = new StorageConf(path);
        if (path != null && !path.isEmpty() && !"null".equals(path)) {
            List<String> lines;
            try {
                lines = Files.readAllLines(new File(path).toPath(), StandardCharsets.UTF_8);
            } catch (IOException e) {
                throw new StorageException("cannot read storage conf " + path + ": " + e, e);
            }
            int n = 0;
            for (String raw : lines) {
                n++;
                String line = raw.trim();
                if (line.isEmpty() || line.startsWith("#")) {
                    continue;
                }
                int eq = line.indexOf('=');
                if (eq <= 0) {
                    throw new StorageException(path + ":" + n + ": expected key=value");
                }
                String key = line.substring(0, eq).trim();
                if (!conf.values.containsKey(key)) {
                    throw new StorageException(path + ":" + n + ": unknown key '" + key + "' (known: " + conf.values.keySet() + ")");
                }
                conf.values.put(key, unquote(line.substring(eq + 1).trim()));
                conf.given.add(key);
            }
        }
        if (conf.values.get("redis_url").isEmpty()) {
            conf.values.put("redis_url", defaultSetting("redis_url", ""));
        }
        if (!conf.given.contains("namespace")) {
            conf.values.put("namespace", defaultSetting("namespace", "sa"));
        }
        if (conf.values.get("redis_url").isEmpty()) {
            throw new StorageException("no metadata Redis: set redis_url in the storage conf, STORAGE_API_REDIS_URL, "
                + "or run `storage-api up`");
        }
        return conf;
    }

    private static String unquote(String v) {
        return v.length() >= 2 && v.startsWith("\"") && v.endsWith("\"") ? v.substring(1, v.length() - 1) : v;
    }

    /** A setting as storage_api resolves it when the conf leaves it empty: environment, then TOML files. */
    static String defaultSetting(String name, String fallback) {
        String env = System.getenv("STORAGE_API_" + name.toUpperCase());
        if (env != null && !env.isEmpty()) {
            return env;
        }
        String file = System.getenv("STORAGE_API_CONFIG");
        if (file == null || file.isEmpty()) {
            String home = System.getenv("STORAGE_API_HOME");
            if (home == null || home.isEmpty()) {
                home = System.getProperty("user.home") + File.separator + ".storage-api";
            }
            file = home + File.separator + "local" + File.separator + "client.toml";
        }
        String v = tomlString(file, name);
        return v != null ? v : fallback;
    }

    /** The string value of {@code key = "..."} in a flat TOML file (the files storage_api writes). */
    static String tomlString(String file, String key) {
        try {
            for (String raw : Files.readAllLines(new File(file).toPath(), StandardCharsets.UTF_8)) {
                String line = raw.trim();
                int eq = line.indexOf('=');
                if (eq > 0 && line.substring(0, eq).trim().equals(key)) {
                    String v = line.substring(eq + 1).trim();
                    if (v.startsWith("\"") && v.endsWith("\"") && v.length() >= 2) {
                        return v.substring(1, v.length() - 1).replace("\\\"", "\"").replace("\\\\", "\\");
                    }
                    return v;
                }
            }
        } catch (IOException e) {
            return null;
        }
        return null;
    }

    public String get(String key) {
        return values.get(key);
    }

    public int getInt(String key) throws StorageException {
        try {
            return Integer.parseInt(values.get(key).trim());
        } catch (NumberFormatException e) {
            throw new StorageException("storage conf " + path + ": " + key + " must be an integer");
        }
    }

    public String path() {
        return path;
    }
}
