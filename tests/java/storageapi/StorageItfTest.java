package storageapi;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.UUID;

import org.junit.After;
import org.junit.Before;
import org.junit.Test;

import storage.StorageException;
import storage.StorageItf;

/**
 * storage.StorageItf against a real Redis and real backends, started by tests/test_compss_java.py,
 * which passes them in system properties:
 * storageapi.test.conf (a storage conf), .oid (an object on backend A with a replica on B), .oid2 (another),
 * .locations (the COMPSs names expected for it, comma-separated), .hostB (B's COMPSs name),
 * .out (a file where the ids this test created are written for the Python side to check).
 */
public class StorageItfTest {

    private static String prop(String name) {
        String v = System.getProperty("storageapi.test." + name);
        assertNotNull("system property storageapi.test." + name, v);
        return v;
    }

    private static void record(String line) throws IOException {
        Files.write(new File(prop("out")).toPath(), (line + "\n").getBytes(StandardCharsets.UTF_8),
            java.nio.file.StandardOpenOption.CREATE, java.nio.file.StandardOpenOption.APPEND);
    }

    @Before
    public void init() throws StorageException {
        StorageItf.init(prop("conf"));
    }

    @After
    public void finish() throws StorageException {
        StorageItf.finish();
    }

    @Test
    public void locationsArePrimaryThenReplicasByCompssName() throws StorageException {
        List<String> expected = Arrays.asList(prop("locations").split(","));
        assertEquals(expected, StorageItf.getLocations(prop("oid")));
        assertEquals("cached answer", expected, StorageItf.getLocations(prop("oid")));
    }

    @Test
    public void unknownIdHasNoLocationsNeverNull() throws StorageException {
        List<String> none = StorageItf.getLocations(UUID.randomUUID().toString());
        assertNotNull(none);
        assertTrue(none.isEmpty());
    }

    @Test
    public void initIsIdempotent() throws StorageException {
        StorageItf.init(prop("conf"));
        assertEquals(Arrays.asList(prop("locations").split(",")), StorageItf.getLocations(prop("oid")));
    }

    @Test
    public void newVersionCopiesToTheNamedHost() throws StorageException, IOException {
        String src = prop("oid");
        String v = StorageItf.newVersion(src, true, prop("hostB"));
        assertNotEquals(src, v);
        assertEquals(v, UUID.fromString(v).toString());
        assertEquals(Arrays.asList(prop("hostB")), StorageItf.getLocations(v));
        assertEquals("the source is preserved", Arrays.asList(prop("locations").split(",")), StorageItf.getLocations(src));
        record("preserved " + src + " " + v);
    }

    @Test
    public void newVersionWithoutPreserveDropsTheSource() throws StorageException, IOException {
        String src = StorageItf.newVersion(prop("oid"), true, "");
        String v = StorageItf.newVersion(src, false, "no-such-node");
        assertNotEquals(src, v);
        assertEquals(new ArrayList<String>(), StorageItf.getLocations(src));
        assertEquals(1, StorageItf.getLocations(v).size());
        record("dropped " + src + " " + v);
    }

    @Test
    public void consolidateDeletesEarlierVersions() throws StorageException, IOException {
        String root = prop("oid2"); // a chain of its own: consolidation deletes the root too
        String v1 = StorageItf.newVersion(root, true, "");
        String v2 = StorageItf.newVersion(v1, true, "");
        String v3 = StorageItf.newVersion(v2, true, "");
        StorageItf.consolidateVersion(v3);
        assertTrue(StorageItf.getLocations(root).isEmpty());
        assertTrue(StorageItf.getLocations(v1).isEmpty());
        assertTrue(StorageItf.getLocations(v2).isEmpty());
        assertEquals(1, StorageItf.getLocations(v3).size());
        record("consolidated " + v3);
    }

    @Test
    public void versionOfAnUnknownObjectIsAStorageException() {
        try {
            StorageItf.newVersion(UUID.randomUUID().toString(), true, "");
            fail("expected StorageException");
        } catch (StorageException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("no object"));
        }
    }

    @Test
    public void badRedisAddressIsAStorageException() throws IOException {
        File conf = File.createTempFile("bad", ".conf");
        conf.deleteOnExit();
        Files.write(conf.toPath(), "redis_url=redis://127.0.0.1:1/0\n".getBytes(StandardCharsets.UTF_8));
        try {
            StorageItf.init(conf.getPath());
            fail("expected StorageException");
        } catch (StorageException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("cannot reach Redis"));
        }
    }

    @Test
    public void wrongPasswordIsAStorageException() throws IOException {
        File conf = File.createTempFile("badpw", ".conf");
        conf.deleteOnExit();
        String url = StorageConf.tomlString(prop("conf"), "redis_url");
        String wrong = url.replaceFirst("//[^@/]*@", "//:wrong@");
        Files.write(conf.toPath(), ("redis_url=" + wrong + "\n").getBytes(StandardCharsets.UTF_8));
        try {
            StorageItf.init(conf.getPath());
            fail("expected StorageException");
        } catch (StorageException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("refused"));
        }
    }

    @Test
    public void unknownConfKeyIsAStorageException() throws IOException {
        File conf = File.createTempFile("typo", ".conf");
        conf.deleteOnExit();
        Files.write(conf.toPath(), "redis_ulr=redis://127.0.0.1:6379/0\n".getBytes(StandardCharsets.UTF_8));
        try {
            StorageItf.init(conf.getPath());
            fail("expected StorageException");
        } catch (StorageException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("unknown key"));
        }
    }

    @Test
    public void javaObjectsAndTasksAreRefusedClearly() {
        try {
            StorageItf.getByID(prop("oid"));
            fail("expected StorageException");
        } catch (StorageException e) {
            assertTrue(e.getMessage().contains("Python"));
        }
        try {
            StorageItf.executeTask(prop("oid"), "run()V", new Object[0], "h", null);
            fail("expected StorageException");
        } catch (StorageException e) {
            assertTrue(e.getMessage().contains("Python"));
        }
        try {
            StorageItf.getResult(null);
            fail("expected StorageException");
        } catch (StorageException e) {
            assertTrue(e.getMessage().contains("Python"));
        }
    }

    @Test
    public void jsonOfTheControlQueue() {
        Object v = Util.parseJson("{\"ok\": false, \"error\": \"E: \\\"x\\\"\\u00e9\", \"result\": [1.5, null, true]}");
        assertEquals("{ok=false, error=E: \"x\"\u00e9, result=[1.5, null, true]}", v.toString());
        assertEquals("\"a\\\"b\\\\c\\n\"", Util.quote("a\"b\\c\n"));
    }
}
